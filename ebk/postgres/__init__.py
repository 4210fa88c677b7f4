"""PostgreSQL tooling: connections, the replication-protocol base backup, pg_dump."""
