"""Connections to the source cluster and facts about it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from ebk.childenv import libpq_child_env
from ebk.config import PostgresConfig
from ebk.errors import ConfigError, PostgresError
from ebk.privatefile import read_private_file

MIN_SERVER_VERSION_NUM = 150000
# The majors CI runs round trips on (docs/postgresql-versions.md).
TESTED_MAJORS = (15, 16, 17, 18)


def require_supported(server_version_num: int, where: str) -> None:
    """Refuse servers older than 15 (BASE_BACKUP's 15+ framing, pg_dump -Fc of 15+)."""
    if server_version_num < MIN_SERVER_VERSION_NUM:
        major = server_version_num // 10000 if server_version_num >= 100000 else None
        shown = f"PostgreSQL {major}" if major else f"server_version_num {server_version_num}"
        raise PostgresError(
            f"{shown} at {where} is not supported: ebk needs PostgreSQL 15 or newer",
            hint="upgrade the server (ebk is tested on 15, 16, 17 and 18), or back it up "
            "with the tools of its own release",
        )


@dataclass(frozen=True)
class ClusterInfo:
    system_identifier: str
    server_version: str
    server_version_num: int

    @property
    def major(self) -> int:
        return self.server_version_num // 10000


def _password(cfg: PostgresConfig) -> str | None:
    """A password only ever comes from a 0600 file or libpq's own PGPASSWORD/PGPASSFILE."""
    if not cfg.password_file:
        return None
    _, raw = read_private_file(
        Path(cfg.password_file),
        "postgres.password_file",
        ConfigError,
        missing_hint="create it (one line, mode 0600) or fix postgres.password_file",
    )
    return raw.decode("utf-8", errors="replace").strip()


def conninfo(cfg: PostgresConfig, *, replication: bool = False, dbname: str | None = None) -> str:
    params: dict[str, object] = {
        "host": cfg.host,
        "port": cfg.port,
        "user": cfg.user,
        "dbname": dbname or cfg.dbname,
        "application_name": "ebk",
        "connect_timeout": 10,
    }
    password = _password(cfg)
    if password is not None:
        params["password"] = password
    if replication:
        params["replication"] = "true"
    return make_conninfo(**params)  # type: ignore[arg-type]


@contextmanager
def libpq_env(cfg: PostgresConfig, dbname: str | None = None) -> Iterator[dict[str, str]]:
    """Environment for pg_dump/pg_restore/psql, held open while the child runs.

    Nothing secret goes on a command line or into the environment: the child
    gets the allow-list of ebk.childenv and the password through a private
    PGPASSFILE (from postgres.password_file, else ebk's own PGPASSWORD).
    """
    settings = {
        "PGHOST": cfg.host,
        "PGPORT": str(cfg.port),
        "PGUSER": cfg.user,
        "PGDATABASE": dbname or cfg.dbname,
        "PGAPPNAME": "ebk",
        "PGCONNECT_TIMEOUT": "10",
    }
    password = _password(cfg)
    if password is None:
        password = os.environ.get("PGPASSWORD")
    with libpq_child_env(settings, password) as env:
        yield env


def connect(cfg: PostgresConfig, *, dbname: str | None = None) -> psycopg.Connection:
    try:
        return psycopg.connect(conninfo(cfg, dbname=dbname), autocommit=True)
    except psycopg.OperationalError as exc:
        raise PostgresError(
            f"cannot connect to PostgreSQL at {cfg.host}:{cfg.port} as {cfg.user}: "
            f"{str(exc).strip()}",
            hint="check [postgres] host/port/user in the config and that the server is running",
        ) from None


def _query_failed(cfg: PostgresConfig, what: str, exc: psycopg.Error) -> PostgresError:
    return PostgresError(
        f"PostgreSQL refused {what} to {cfg.user}: {str(exc).strip()}",
        hint="the backup role needs REPLICATION and pg_read_all_data "
        "(see infra/postgres/ebk-role.sql)",
    )


def _on(
    cfg: PostgresConfig, conn: psycopg.Connection | None
) -> contextlib.AbstractContextManager[psycopg.Connection]:
    """The caller's connection (kept open), or a new one for this one query."""
    if conn is not None:
        return contextlib.nullcontext(conn)
    return connect(cfg)


def cluster_info(cfg: PostgresConfig, conn: psycopg.Connection | None = None) -> ClusterInfo:
    try:
        with _on(cfg, conn) as c:
            row = c.execute(
                "SELECT system_identifier::text, current_setting('server_version'),"
                " current_setting('server_version_num')::int FROM pg_control_system()"
            ).fetchone()
    except psycopg.Error as exc:
        raise _query_failed(cfg, "the cluster's identity", exc) from None
    assert row is not None
    require_supported(row[2], f"{cfg.host}:{cfg.port}")
    return ClusterInfo(row[0], row[1], row[2])


def list_databases(cfg: PostgresConfig, conn: psycopg.Connection | None = None) -> list[str]:
    try:
        with _on(cfg, conn) as c:
            rows = c.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                "ORDER BY 1"
            ).fetchall()
    except psycopg.Error as exc:
        raise _query_failed(cfg, "the list of databases", exc) from None
    return [r[0] for r in rows]
