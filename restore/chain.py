"""Restoring an incremental backup: decrypt its whole chain, then pg_combinebackup.

Every member is authenticated before anything is written (signatures, links,
data keys, MACs: ``open_chain``).  Each member is then decrypted into its own
directory in a staging area beside the target (same volume, checked by the
preflight like the target), and pg_combinebackup of the backup's major writes
the combined data directory into the target; pg_verifybackup checks it.  The
staging area is removed on every path; on failure the target is cleared too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from ebk.chain import authenticated_chain
from ebk.childenv import child_env
from ebk.errors import IntegrityError, PostgresError
from ebk.keys.base import KeyProvider
from ebk.manifest import Manifest
from ebk.postgres.tools import find_tool
from ebk.progress import Progress
from ebk.repository import Repository
from ebk.restore.physical import (
    PG_CONTROL,
    _extract_object,
    _verify_with_pg_tools,
    restore_targets,
    tablespace_targets,
)
from ebk.restore.reader import open_object
from ebk.restore.session import OpenedBackup, open_backup

log = structlog.get_logger("ebk.restore")
STAGING_PREFIX = ".ebk-staging-"


def open_chain(
    repo: Repository, last: Manifest, providers: Sequence[KeyProvider]
) -> list[OpenedBackup]:
    """The chain of ``last``, full backup first, every member authenticated and opened."""
    return [
        open_backup(repo, m, providers, kind="physical") for m in authenticated_chain(repo, last)
    ]


def staging_parent(target: Path) -> Path:
    """Where the staging area goes: beside the target, on the target's volume."""
    return target.absolute().parent


def staging_preflight_paths(target: Path) -> list[Path]:
    """The staging area's directory, when the target's own check does not cover it.

    A target that does not exist yet is checked at its nearest existing ancestor
    (the staging directory itself); one that exists may be a mount point, whose
    parent is another volume and needs its own check.
    """
    parent = staging_parent(target)
    try:
        same = target.exists() and target.stat().st_dev == parent.stat().st_dev
    except OSError:
        same = False
    return [] if same or not target.exists() else [parent]


def _decrypt_member(member: OpenedBackup, into: Path, meter: Progress, position: str) -> None:
    """One member as a directory pg_combinebackup reads (tablespaces beside it)."""
    manifest = member.manifest
    into.mkdir(mode=0o700)
    spaces: dict[str | None, Path] = {
        o.tablespace_oid: into.parent / f"{into.name}-ts-{o.tablespace_oid}"
        for o in manifest.objects
        if o.role == "tablespace"
    }
    for path in spaces.values():
        path.mkdir(mode=0o700)
    held: dict[str, bytes] = {}
    try:
        for stored in manifest.objects:
            with open_object(member, stored) as reader:
                if stored.role == "backup_manifest":
                    (into / "backup_manifest").write_bytes(reader.read())
                else:
                    dest = into if stored.role == "base" else spaces[stored.tablespace_oid]
                    _extract_object(reader, dest, held, spaces, stored.role == "base")
                reader.finish()
                meter.advance(reader.plain_bytes)
    except IntegrityError as exc:
        raise IntegrityError(
            f"backup {manifest.backup_id} ({position} of the chain) is damaged: {exc.message}",
            hint=exc.hint or "restore another backup (`ebk list`)",
        ) from None
    if PG_CONTROL not in held:
        raise IntegrityError(f"backup {manifest.backup_id} has no {PG_CONTROL}")
    (into / PG_CONTROL).write_bytes(held[PG_CONTROL])


def restore_chain(
    chain: Sequence[OpenedBackup],
    target: Path,
    *,
    tablespace_map: Mapping[str, str] | None = None,
    owner: tuple[int, int] | None = None,
    verify: bool = True,
    bin_dir: str = "",
    progress: bool | None = None,
) -> None:
    last = chain[-1].manifest
    target = target.absolute()
    spaces = tablespace_targets(last, tablespace_map or {})
    tool = find_tool("pg_combinebackup", last.major, bin_dir)
    bound = log.bind(backup_id=last.backup_id, target=str(target), chain_length=len(chain))
    meter = Progress(f"restore {last.backup_id} (chain of {len(chain)})", enabled=progress)
    staging: Path | None = None
    try:
        with restore_targets(target, spaces, owner, bound):
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=staging_parent(target)))
            members: list[Path] = []
            for index, member in enumerate(chain):
                into = staging / f"{index:04d}"
                position = f"member {index + 1} of {len(chain)}"
                _decrypt_member(member, into, meter, position)
                members.append(into)
                bound.info("chain member decrypted", member=member.backup_id, position=position)
            if meter.enabled:  # a terminal: say what the quiet part is doing
                sys.stderr.write(f"\ncombining {len(chain)} backups with pg_combinebackup ...")
                sys.stderr.flush()
            _combine(tool, members, target, spaces)
            if verify:
                _verify_with_pg_tools(target, last, bin_dir)
    finally:
        meter.finish()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    bound.info("restore complete", plain_bytes=meter.done)


def _combine(
    tool: str, members: Sequence[Path], target: Path, spaces: Mapping[str | None, Path]
) -> None:
    """pg_combinebackup: the last member's tablespaces go to their restore targets."""
    last = members[-1]
    relocate = [
        f"--tablespace-mapping={last.parent / f'{last.name}-ts-{oid}'}={location}"
        for oid, location in spaces.items()
    ]
    transfer = _transfer_option(tool, last.parent, [target, *spaces.values()])
    proc = subprocess.run(
        [tool, "--output", str(target), *transfer, *relocate, *map(str, members)],
        capture_output=True,
        text=True,
        check=False,
        env=child_env(),
    )
    if proc.returncode != 0:
        raise PostgresError(
            f"pg_combinebackup could not combine the chain: {proc.stderr.strip()}",
            hint="every member authenticated, so the chain itself is inconsistent; restore "
            "another backup (`ebk list`)",
        )


def _transfer_option(tool: str, staging: Path, outputs: Sequence[Path]) -> list[str]:
    """How pg_combinebackup moves unchanged files from the staging area to the target.

    The staging area is removed afterwards, so on one file system its files can
    become the target's: hard links (18's --link) write nothing, copy_file_range
    (17) copies in the kernel.  Across file systems (a target that is a mount
    point) both fail, so pg_combinebackup copies as usual.
    """
    try:
        device = staging.stat().st_dev
        if any(p.stat().st_dev != device for p in outputs):
            return []
    except OSError:
        return []
    usage = subprocess.run(
        [tool, "--help"], capture_output=True, text=True, check=False, env=child_env()
    ).stdout
    for option in ("--link", "--copy-file-range"):
        if f"{option} " in usage:
            return [option]
    return []
