"""The long-running ebk daemon: scheduled jobs, retention, locks, health endpoints."""
