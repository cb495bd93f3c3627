"""HTTP concerns; each module has one job (see app.py for the list)."""
