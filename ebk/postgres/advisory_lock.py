"""One backup of a cluster at a time: a PostgreSQL session advisory lock.

The lock is held on a connection of its own for the length of the backup.  It
works across processes and hosts (a Kubernetes CronJob and a sidecar cannot
collide) and vanishes with the session if ebk dies.  Advisory locks are per
database: every ebk that backs up a cluster must use the same
``postgres.dbname`` (default "postgres").
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import psycopg
import structlog

from ebk.config import PostgresConfig
from ebk.errors import LockBusy, PostgresError
from ebk.identity import process_identity
from ebk.postgres.connection import conninfo

log = structlog.get_logger("ebk.locks")

BACKUP_LOCK_NAME = "ebk-backup"


def advisory_key(name: str = BACKUP_LOCK_NAME) -> int:
    """A fixed signed 64-bit key: the same in every ebk version and on every host."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


_HOLDER_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr), a.client_hostname, a.usename,
       a.backend_start
  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _holder(conn: psycopg.Connection, key: int) -> str:
    """Who holds the advisory lock, from pg_locks + pg_stat_activity (best effort)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    try:
        row = conn.execute(_HOLDER_SQL, (unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchone()
    except psycopg.Error:
        return "another session (its details are not visible to this user)"
    if row is None:
        return "another session (it may just have finished)"
    pid, app, addr, hostname, user, since = row
    parts = [f"PostgreSQL backend pid {pid}"]
    if app:
        parts.append(f"application_name {app!r}")
    if user:
        parts.append(f"user {user}")
    if addr or hostname:
        parts.append(f"from {hostname or addr}")
    elif pid is not None and user:
        parts.append("over a local socket")
    if since is not None:
        parts.append(f"connected since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip())
    return ", ".join(parts)


@contextlib.contextmanager
def cluster_backup_lock(cfg: PostgresConfig) -> Iterator[psycopg.Connection]:
    """Held for the length of one backup; LockBusy (exit 8) names the holder.

    Yields the lock's own connection: the backup reads the cluster's metadata
    over it, so one backup needs one ordinary connection (plus the replication one).
    """
    user, host, pid = process_identity()
    key = advisory_key()
    app = f"ebk-lock {host} pid {pid}"[:63]
    try:
        conn = psycopg.connect(
            conninfo(cfg),
            autocommit=True,
            application_name=app,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=6,
        )
    except psycopg.OperationalError as exc:
        raise PostgresError(
            f"cannot connect to PostgreSQL at {cfg.host}:{cfg.port} as {cfg.user} to take the "
            f"backup lock: {str(exc).strip()}",
            hint="check [postgres] host/port/user in the config and that the server is running",
        ) from None
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not row or not row[0]:
            holder = _holder(conn, key)
            raise LockBusy(
                f"another backup of the cluster at {cfg.host}:{cfg.port} is running; the "
                f"backup lock is held by {holder}",
                hint="wait for it to finish: only one ebk backup of a cluster runs at a time, "
                "across hosts (schedule the jobs apart)",
            )
        log.debug("cluster backup lock taken", key=key, owner=f"{user}@{host}")
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        conn.close()
