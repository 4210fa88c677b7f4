"""Restoring backups: physical into an empty data directory, logical through pg_restore."""
