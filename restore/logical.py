"""Logical restore: decrypted pg_dump output piped into pg_restore, never spooled."""

from __future__ import annotations

import subprocess

import psycopg
import structlog
from psycopg import sql

from ebk.config import PostgresConfig
from ebk.errors import EbkError, PostgresError, RestoreTargetError
from ebk.manifest import Manifest, StoredObject
from ebk.postgres.connection import connect, libpq_env
from ebk.postgres.tools import find_tool
from ebk.restore.reader import open_object
from ebk.restore.session import OpenedBackup

log = structlog.get_logger("ebk.restore")
PIPE_CHUNK = 1024 * 1024


def _pick_dump(manifest: Manifest, database: str | None) -> StoredObject:
    dumps = [o for o in manifest.objects if o.role == "dump"]
    if database is None:
        if len(dumps) != 1:
            names = ", ".join(str(o.database) for o in dumps)
            raise RestoreTargetError(
                f"backup {manifest.backup_id} holds {len(dumps)} databases ({names})",
                hint="choose one with --database NAME",
            )
        return dumps[0]
    for stored in dumps:
        if stored.database == database:
            return stored
    raise RestoreTargetError(
        f"backup {manifest.backup_id} holds no dump of database {database!r}",
        hint=f"it holds: {', '.join(str(o.database) for o in dumps)}",
    )


def _pipe(
    backup: OpenedBackup,
    stored: StoredObject,
    argv: list[str],
    env: dict[str, str],
    what: str,
) -> None:
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        with open_object(backup, stored) as reader:
            try:
                while chunk := reader.read(PIPE_CHUNK):
                    proc.stdin.write(chunk)
                reader.finish()
            except BrokenPipeError:
                pass
            proc.stdin.close()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        raise PostgresError(f"{what} failed: {err or 'exit code ' + str(proc.returncode)}")


def restore_logical(
    backup: OpenedBackup,
    cfg: PostgresConfig,
    *,
    target_db: str,
    database: str | None = None,
    create: bool = False,
    with_globals: bool = False,
) -> None:
    manifest = backup.manifest
    stored = _pick_dump(manifest, database)
    major = manifest.major
    bound = log.bind(backup_id=manifest.backup_id, database=stored.database, target_db=target_db)
    if with_globals:
        globals_obj = next((o for o in manifest.objects if o.role == "globals"), None)
        if globals_obj is None:
            raise RestoreTargetError(f"backup {manifest.backup_id} has no globals (roles)")
        psql = find_tool("psql", major, cfg.bin_dir)
        _pipe(
            backup,
            globals_obj,
            [psql, "-X", "-q", "-f", "-"],
            libpq_env(cfg, "postgres"),
            "restoring globals with psql",
        )
    if create:
        with connect(cfg) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (target_db,)
            ).fetchone()
            if exists:
                raise RestoreTargetError(
                    f"database {target_db!r} already exists; refusing to restore over it",
                    hint="drop it first, or restore into another name with --to-db",
                )
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target_db)))
            except psycopg.Error as exc:
                raise PostgresError(
                    f"cannot create database {target_db!r}: {str(exc).strip()}",
                    hint="the role needs CREATEDB, or create the database first and omit --create",
                ) from None
    pg_restore = find_tool("pg_restore", major, cfg.bin_dir)
    argv = [pg_restore, "--exit-on-error", "--single-transaction", "--no-password", "-d", target_db]
    try:
        _pipe(
            backup,
            stored,
            argv,
            libpq_env(cfg, target_db),
            f"pg_restore into {target_db!r}",
        )
    except BaseException as exc:
        if create:
            with connect(cfg) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(target_db))
                )
        if isinstance(exc, EbkError):
            bound.error("restore failed", error=exc.message)
        raise
    bound.info("restore complete")
