"""Logical restore: decrypted pg_dump output piped into pg_restore, never spooled."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterable

import psycopg
import structlog
from psycopg import sql

from ebk.config import PostgresConfig
from ebk.errors import EbkError, PostgresError, RestoreTargetError
from ebk.manifest import Manifest, StoredObject
from ebk.postgres.connection import connect, libpq_env
from ebk.postgres.tools import find_tool
from ebk.restore.globals import GlobalsFilter
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
    cfg: PostgresConfig,
    dbname: str,
    what: str,
    transform: Callable[[Iterable[bytes]], Iterable[bytes]] | None = None,
) -> None:
    """Stream one object into a client tool; the whole stream authenticates before success.

    If the tool stops reading early, the rest of the object is still read and
    authenticated, so damage is reported as an integrity error (exit 5), not as
    the tool's complaint about bad input.
    """
    with libpq_env(cfg, dbname) as env:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        assert proc.stdin is not None and proc.stderr is not None
        try:
            with open_object(backup, stored) as reader:
                chunks: Iterable[bytes] = iter(lambda: reader.read(PIPE_CHUNK), b"")
                if transform is not None:
                    chunks = transform(chunks)
                try:
                    for chunk in chunks:
                        proc.stdin.write(chunk)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                reader.finish()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        returncode = proc.wait()
    if returncode != 0:
        raise PostgresError(f"{what} failed: {err or 'exit code ' + str(returncode)}")


def _check_new_database(cfg: PostgresConfig, target_db: str) -> None:
    with connect(cfg) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (target_db,)
        ).fetchone()
    if exists:
        raise RestoreTargetError(
            f"database {target_db!r} already exists; refusing to restore over it",
            hint="drop it first, or restore into another name with --to-db",
        )


def _restore_globals(backup: OpenedBackup, cfg: PostgresConfig, major: int) -> None:
    """Roles in one transaction with ON_ERROR_STOP: a failure changes no role."""
    manifest = backup.manifest
    globals_obj = next((o for o in manifest.objects if o.role == "globals"), None)
    if globals_obj is None:
        raise RestoreTargetError(f"backup {manifest.backup_id} has no globals (roles)")
    with connect(cfg) as conn:
        roles = [r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()]
    script = GlobalsFilter(roles)
    psql = find_tool("psql", major, cfg.bin_dir)
    try:
        _pipe(
            backup,
            globals_obj,
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"],
            cfg,
            "postgres",
            "restoring globals with psql (nothing was changed: it runs as one transaction)",
            transform=script,
        )
    except PostgresError as exc:
        if "invalid command \\restrict" not in exc.message:
            raise
        raise PostgresError(
            exc.message,
            hint=f"{psql} is older than the pg_dumpall that wrote the backup (it lacks "
            f"\\restrict); install the current postgresql-client-{major}, or set postgres.bin_dir",
        ) from None
    if script.tablespace_statements:
        log.warning(
            "tablespaces were not restored: create them on this host if the dump uses them",
            statements_skipped=script.tablespace_statements,
        )


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
    if create:
        _check_new_database(cfg, target_db)
    if with_globals:
        _restore_globals(backup, cfg, major)
    if create:
        with connect(cfg) as conn:
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
            cfg,
            target_db,
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
