"""Release checks: what runs while CodeDeploy shifts traffic to a new version."""
