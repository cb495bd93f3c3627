"""Automation: queue ingest, bulk import, change events, the daily export, and car files."""
