"""Which paths hold database bytes: data directory, pg_wal, tablespaces, ebk's own dirs.

With postgres.data_directory set, everything is read from disk (pg_wal and the
pg_tblspc symlinks) and the server is never contacted, so preflight works
before the server starts.  Otherwise the server is asked (SHOW data_directory,
pg_tablespace).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from ebk.config import Config, PostgresConfig
from ebk.errors import EbkError
from ebk.logsetup import verbose
from ebk.preflight.model import Target

FIX_VOLUME = (
    "put it on an encrypted volume (LUKS/dm-crypt, an fscrypt-encrypted directory, "
    "gocryptfs, ZFS native encryption, or an encrypted cloud disk / StorageClass)"
)


def _wal_fix(wal: Path) -> str:
    if wal.is_symlink():
        return (
            f"pg_wal is a symlink to {os.readlink(wal)}: stop the server, move that directory "
            "to encrypted storage and point the symlink there (or initdb --waldir on "
            "encrypted storage)"
        )
    return "pg_wal lives inside the data directory: " + FIX_VOLUME


def _disk_tablespaces(data_dir: Path) -> list[tuple[str, str]]:
    links = data_dir / "pg_tblspc"
    out = []
    for link in sorted(links.iterdir()):
        out.append((f"oid {link.name}", os.readlink(link) if link.is_symlink() else str(link)))
    return out


def _server_facts(pg: PostgresConfig) -> tuple[str, list[tuple[str, str]]]:
    import psycopg

    from ebk.errors import PostgresError
    from ebk.postgres.connection import connect

    try:
        with connect(pg) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
            rows = conn.execute(
                "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace"
                " WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY spcname"
            ).fetchall()
    except psycopg.Error as exc:
        raise PostgresError(
            f"cannot read data_directory from the server: {str(exc).strip()}",
            hint="grant the role pg_read_all_settings, or set postgres.data_directory",
        ) from None
    assert row is not None
    return str(row[0]), [(str(name), str(loc)) for name, loc in rows]


def summarise(message: str, limit: int = 160) -> str:
    """A driver error in one short line; the whole text under `ebk --verbose`.

    libpq's errors span lines and repeat the host ("connection failed: connection to
    server at ... failed: Connection refused\n\tIs the server running ..."): keep what ebk
    said and the final cause.
    """
    flat = " ".join(message.split())
    if verbose():
        return flat
    first = message.strip().splitlines()[0] if message.strip() else ""
    cause = re.search(r"failed: ([^:]+)$", first)
    short = f"{first.split(': ', 1)[0]}: {cause.group(1)}" if cause else first
    if len(short) > limit:
        short = short[: limit - 1] + "…"
    return f"{short} (details: ebk --verbose preflight)" if short != flat else short


def cluster_targets(pg: PostgresConfig) -> list[Target]:
    """The data directory, pg_wal and every tablespace of the configured cluster."""
    data_fix = f"move the data directory to encrypted storage: {FIX_VOLUME}"
    tablespaces: list[tuple[str, str]] = []
    if pg.data_directory:
        data_dir = pg.data_directory
        try:
            tablespaces = _disk_tablespaces(Path(data_dir))
        except FileNotFoundError:
            tablespaces = []
        except OSError as exc:
            return [
                Target("data_directory", data_dir, "data directory", fix=data_fix),
                Target(
                    "tablespace",
                    "",
                    f"cannot list {data_dir}/pg_tblspc: {exc.strerror} "
                    "(run preflight as root or as the database owner)",
                    fix=data_fix,
                ),
            ]
    else:
        try:
            data_dir, tablespaces = _server_facts(pg)
        except EbkError as exc:
            return [
                Target(
                    "data_directory",
                    "",
                    "data directory",
                    unresolved=summarise(exc.message),
                    fix="set postgres.data_directory in the config, or make the server "
                    "reachable so preflight can ask it (SHOW data_directory)",
                )
            ]
    wal = Path(data_dir) / "pg_wal"
    targets = [
        Target("data_directory", data_dir, "data directory", fix=data_fix),
        Target("pg_wal", str(wal), "WAL (pg_wal)", fix=_wal_fix(wal)),
    ]
    for name, location in tablespaces:
        targets.append(
            Target(
                "tablespace",
                location,
                f"tablespace {name}",
                fix=(
                    f"tablespace {name} at {location} is not encrypted: create a tablespace on "
                    "encrypted storage and move its objects (ALTER TABLE/INDEX ... SET TABLESPACE, "
                    "ALTER DATABASE ... SET TABLESPACE), then drop it"
                ),
            )
        )
    return targets


def targets_for(
    config: Config,
    *,
    purpose: str,
    restore_target: Path | None = None,
    tablespace_targets: Sequence[Path] = (),
) -> list[Target]:
    """What a purpose touches: backup reads the cluster, restore writes its targets."""
    targets: list[Target] = []
    if restore_target is not None:
        targets.append(
            Target(
                "restore_target",
                str(restore_target.absolute()),
                "restore target",
                must_exist=False,
                fix=f"restore into a directory on encrypted storage: {FIX_VOLUME}",
            )
        )
    for location in tablespace_targets:
        targets.append(
            Target(
                "restore_target",
                str(location.absolute()),
                "tablespace restore target",
                must_exist=False,
                fix=f"map the tablespace onto encrypted storage with --tablespace-map OID=DIR: "
                f"{FIX_VOLUME}",
            )
        )
    if purpose != "restore" or restore_target is None:
        targets.extend(cluster_targets(config.postgres))
    pf = config.preflight
    if pf.spool_dir:
        targets.append(
            Target(
                "spool",
                pf.spool_dir,
                "ebk spool/state directory",
                must_exist=False,
                fix=f"set preflight.spool_dir to a directory that is encrypted; {FIX_VOLUME}",
            )
        )
    for path in pf.extra_paths:
        targets.append(
            Target(
                "extra",
                path,
                "extra path (preflight.extra_paths)",
                must_exist=False,
                fix=FIX_VOLUME,
            )
        )
    return targets
