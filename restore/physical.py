"""Physical restore into an empty directory, ready for `pg_ctl start`.

Every chunk is authenticated before its bytes are written.  global/pg_control
is held in memory and written only after every object has been verified, so a
restore that fails or is killed never leaves a directory PostgreSQL would
start from; on a handled failure everything written is removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from ebk.childenv import child_env
from ebk.errors import EbkError, IntegrityError, PostgresError, RestoreTargetError
from ebk.manifest import Manifest
from ebk.postgres.tools import find_tool
from ebk.progress import Progress
from ebk.restore.reader import ObjectReader, open_object
from ebk.restore.session import OpenedBackup
from ebk.safetar import check_member, extract_member

log = structlog.get_logger("ebk.restore")
PG_CONTROL = "global/pg_control"


def _prepare_empty_dir(path: Path, what: str) -> bool:
    """Create ``path`` or accept it empty; returns True when ebk created it."""
    if path.exists():
        if not path.is_dir():
            raise RestoreTargetError(f"{what} {path} exists and is not a directory")
        if any(path.iterdir()):
            raise RestoreTargetError(
                f"{what} {path} is not empty; refusing to overwrite anything",
                hint="restore into a new or empty directory",
            )
        return False
    path.mkdir(parents=True, mode=0o700)
    return True


def _clear(path: Path, created: bool) -> None:
    if created:
        shutil.rmtree(path, ignore_errors=True)
    elif path.is_dir():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _extract(
    reader: tarfile.TarFile,
    dest: Path,
    held: dict[str, bytes],
    spaces: Mapping[str | None, Path],
    is_base: bool,
) -> None:
    """Extract one archive; the base archive's pg_control is held, tablespace links remapped."""
    for member in reader:
        if is_base and member.name == PG_CONTROL:
            extracted = reader.extractfile(member)
            assert extracted is not None
            held[PG_CONTROL] = extracted.read()
            continue
        if is_base and member.name.rstrip("/") == "tablespace_map":
            continue  # rewritten below with the (possibly remapped) locations
        if is_base and member.name.startswith("pg_tblspc/") and member.issym():
            oid = member.name.rstrip("/").split("/")[1]
            if oid not in spaces:
                raise IntegrityError(f"base archive links tablespace {oid}, which has no archive")
            link = dest / "pg_tblspc" / oid
            link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            link.symlink_to(spaces[oid])
            continue
        check_member(member, dest)  # ebk.safetar: not only the stdlib filter
        extract_member(reader, member, dest)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def tablespace_targets(manifest: Manifest, remap: Mapping[str, str]) -> dict[str | None, Path]:
    """Where each tablespace of the backup is restored: its recorded location unless remapped."""
    return {
        o.tablespace_oid: Path(remap.get(o.tablespace_oid or "", o.tablespace_location or ""))
        for o in manifest.objects
        if o.role == "tablespace"
    }


def restore_physical(
    backup: OpenedBackup,
    target: Path,
    *,
    tablespace_map: Mapping[str, str] | None = None,
    owner: tuple[int, int] | None = None,
    verify: bool = True,
    bin_dir: str = "",
    progress: bool | None = None,
) -> None:
    manifest = backup.manifest
    target = target.absolute()
    spaces = tablespace_targets(manifest, tablespace_map or {})
    meter = Progress(f"restore {manifest.backup_id}", enabled=progress)
    bound = log.bind(backup_id=manifest.backup_id, target=str(target))
    try:
        with restore_targets(target, spaces, owner, bound):
            held: dict[str, bytes] = {}
            for stored in manifest.objects:
                with open_object(backup, stored) as reader:
                    if stored.role == "backup_manifest":
                        (target / "backup_manifest").write_bytes(reader.read())
                    else:
                        dest = target if stored.role == "base" else spaces[stored.tablespace_oid]
                        _extract_object(reader, dest, held, spaces, stored.role == "base")
                    reader.finish()
                    meter.advance(reader.plain_bytes)
                bound.info("object restored", object=stored.name)
            if PG_CONTROL not in held:
                raise IntegrityError(f"backup {manifest.backup_id} has no {PG_CONTROL}")
            if verify:
                _verify_with_pg_tools(target, manifest, bin_dir)
            (target / PG_CONTROL).write_bytes(held[PG_CONTROL])
            os.chmod(target / PG_CONTROL, 0o600)
    finally:
        meter.finish()
    bound.info("restore complete", plain_bytes=meter.done)


@contextmanager
def restore_targets(
    target: Path,
    spaces: Mapping[str | None, Path],
    owner: tuple[int, int] | None,
    bound: Any,
) -> Iterator[None]:
    """The target and tablespace directories, created or found empty.  On success the
    target is made 0700 and everything handed to ``owner``; on any failure what ebk
    created is removed and what it found empty is emptied again (no half-restored
    cluster is left for someone to start)."""
    created: list[tuple[Path, bool]] = [(target, _prepare_empty_dir(target, "restore target"))]
    try:
        for oid, location in spaces.items():
            if not location.is_absolute():
                raise RestoreTargetError(f"tablespace {oid} maps to a relative path {location}")
            created.append((location, _prepare_empty_dir(location, f"tablespace {oid} target")))
        yield
        os.chmod(target, 0o700)
        if owner is not None:
            for path, _ in created:
                _chown_tree(path, *owner)
    except BaseException as exc:
        for path, was_created in reversed(created):
            _clear(path, was_created)
        if isinstance(exc, EbkError):
            bound.error("restore failed; the target was cleared", error=exc.message)
        raise


def _extract_object(
    reader: ObjectReader,
    dest: Path,
    held: dict[str, bytes],
    spaces: Mapping[str | None, Path],
    is_base: bool,
) -> None:
    try:
        with tarfile.open(fileobj=reader, mode="r|") as archive:  # type: ignore[call-overload]
            _extract(archive, dest, held, spaces, is_base)
    except tarfile.TarError as exc:
        raise IntegrityError(
            f"object {reader.stored.name} decrypted but is not a valid archive: {exc}",
            hint="the backup was written by a faulty producer; restore from another backup",
        ) from None
    except OSError as exc:
        raise RestoreTargetError(
            f"cannot write into {dest}: {exc.strerror or exc}",
            hint="check free space and permissions of the restore target",
        ) from None


def _verify_with_pg_tools(target: Path, manifest: Manifest, bin_dir: str) -> None:
    """pg_verifybackup checks every restored file against PostgreSQL's own manifest."""
    if not (target / "backup_manifest").exists():
        return
    major = manifest.major
    tool = find_tool("pg_verifybackup", major, bin_dir)
    # pg_control is held back until after verification; tell the tool to skip it.
    proc = subprocess.run(
        [tool, "--quiet", "--ignore", PG_CONTROL, str(target)],
        capture_output=True,
        text=True,
        check=False,
        env=child_env(),
    )
    if proc.returncode != 0:
        raise PostgresError(
            f"pg_verifybackup rejected the restored directory: {proc.stderr.strip()}",
            hint="the backup is inconsistent; restore from another backup",
        )
