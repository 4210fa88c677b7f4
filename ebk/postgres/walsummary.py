"""WAL summaries: what PostgreSQL 17+ needs before it can take an incremental backup.

The server finds the blocks changed since the parent from WAL summaries
(``summarize_wal = on``), which must cover everything from the parent's start
LSN to the new backup's.  ebk checks this before it starts, so the operator
gets "what to set" rather than a protocol error, and so a parent older than
the summaries is never chosen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
import structlog

from ebk.config import PostgresConfig
from ebk.errors import PostgresError

log = structlog.get_logger("ebk.postgres")

INCREMENTAL_MIN_MAJOR = 17
SUMMARY_WAIT_SECONDS = 60.0


def require_incremental_support(major: int, where: str) -> None:
    if major < INCREMENTAL_MIN_MAJOR:
        raise PostgresError(
            f"PostgreSQL {major} at {where} cannot take incremental backups: they need "
            f"PostgreSQL {INCREMENTAL_MIN_MAJOR} or newer (WAL summaries, BASE_BACKUP "
            "INCREMENTAL)",
            hint="take full backups (`ebk backup --type physical`), or upgrade the server",
        )


def require_summarize_wal(conn: psycopg.Connection, where: str) -> None:
    row = conn.execute("SELECT current_setting('summarize_wal')").fetchone()
    if row is None or row[0] != "on":
        raise PostgresError(
            f"summarize_wal is off at {where}: incremental backups are built from WAL summaries",
            hint="as a superuser run `ALTER SYSTEM SET summarize_wal = on;` and `SELECT "
            "pg_reload_conf();`, then take a full backup (`ebk backup --type physical`): "
            "incrementals build on backups taken while summaries are written",
        )


def current_timeline(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class Coverage:
    covered: bool | None  # None: the role may not read the summaries; the server decides
    reason: str = ""


def summaries_cover(
    conn: psycopg.Connection,
    *,
    since_lsn: str,
    timeline: int,
    wait_seconds: float = SUMMARY_WAIT_SECONDS,
) -> Coverage:
    """Do this timeline's WAL summaries reach back to ``since_lsn`` (the parent's start)?

    Waits (up to ``wait_seconds``) for the summarizer to pass ``since_lsn`` first: a
    parent taken moments ago is not summarized yet.
    """
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            row = conn.execute(
                "SELECT summarized_tli, summarized_lsn >= %s::pg_lsn "
                "FROM pg_get_wal_summarizer_state()",
                (since_lsn,),
            ).fetchone()
            if row is not None and (row[0] > timeline or (row[0] == timeline and row[1])):
                break
            if time.monotonic() >= deadline:
                log.warning(
                    "WAL summarization has not reached the parent's start yet",
                    since_lsn=since_lsn,
                )
                break
            time.sleep(0.5)
        row = conn.execute(
            "SELECT coalesce(min(start_lsn) <= %s::pg_lsn, false) "
            "FROM pg_available_wal_summaries() WHERE tli = %s",
            (since_lsn, timeline),
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        log.info(
            "cannot read the WAL summaries (EXECUTE on pg_available_wal_summaries and "
            "pg_get_wal_summarizer_state was revoked); the server checks them itself"
        )
        return Coverage(None)
    except psycopg.Error as exc:
        raise PostgresError(f"cannot read the WAL summaries: {str(exc).strip()}") from None
    if row is not None and row[0]:
        return Coverage(True)
    return Coverage(
        False,
        f"the WAL summaries on timeline {timeline} begin after the parent's start "
        f"({since_lsn}): summarize_wal was turned on after it, or old summaries were "
        "removed (wal_summary_keep_time)",
    )


def where(cfg: PostgresConfig) -> str:
    return f"{cfg.host}:{cfg.port}"
