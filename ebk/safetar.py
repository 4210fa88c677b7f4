"""Which tar members a restore may write, decided without tarfile's extraction filters.

`tarfile`'s filter="data" had bypasses (symlink and hard-link escapes) fixed only in
Python 3.11.13 / 3.12.11; ebk supports 3.11 from its first patch release, so restores check
every member here first and keep the stdlib filter as a second layer.  A PostgreSQL base
or tablespace archive holds only directories and regular files (the pg_tblspc links are
made by the restore itself), so anything else is refused.  The archive has already
authenticated (AES-GCM) when it gets here: a refusal means a faulty or hostile producer.
"""

from __future__ import annotations

import copy
import os
import tarfile
from pathlib import Path, PurePosixPath

from ebk.errors import IntegrityError

HINT = "the archive holds an entry a PostgreSQL backup never has; restore from another backup"


def check_member(member: tarfile.TarInfo, dest: Path) -> None:
    """Refuse (IntegrityError) a member that is not a plain file or directory inside dest."""
    name = member.name
    shown = name.encode("unicode_escape").decode("ascii")[:200]
    if not (member.isreg() or member.isdir()):
        kind = (
            "symbolic link"
            if member.issym()
            else "hard link"
            if member.islnk()
            else "device or fifo"
            if member.isdev()
            else f"type {member.type!r}"
        )
        raise IntegrityError(f"archive entry {shown!r} is a {kind}; refused", hint=HINT)
    if not name or "\0" in name or "\\" in name:
        raise IntegrityError(f"archive entry {shown!r} has an invalid name", hint=HINT)
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise IntegrityError(f"archive entry {shown!r} points outside the target", hint=HINT)
    root = os.path.realpath(dest)
    final = os.path.realpath(os.path.join(root, *path.parts))  # follows links already on disk
    if os.path.commonpath([root, final]) != root:
        raise IntegrityError(
            f"archive entry {shown!r} would be written outside {dest} (through a link)",
            hint=HINT,
        )


def extract_member(reader: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    """Extract a member check_member accepted, with the stdlib's "data" filter where this
    Python has it (3.11.4+).  Debian bookworm's 3.11.2 (the container image) has none: the
    same effect by hand — no set-id/sticky or group/other write bits, and the restoring
    user as owner (never the archive's names, which a root restore would chown to)."""
    if hasattr(tarfile, "data_filter"):
        reader.extract(member, dest, filter="data")
        return
    plain = copy.copy(member)
    mode = member.mode & 0o755  # no set-id/sticky, no group/other write
    if member.isreg():
        mode |= 0o600
        if not mode & 0o100:
            mode &= ~0o011  # executable for group/other only if for the owner
    plain.mode = mode
    plain.uid, plain.gid, plain.uname, plain.gname = os.getuid(), os.getgid(), "", ""
    reader.extract(plain, dest, set_attrs=True)
