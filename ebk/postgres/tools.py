"""Locate PostgreSQL client programs that match the server's major version.

pg_dump refuses a newer server, an older pg_restore cannot read a newer dump and
pg_verifybackup checks the manifest format of its own release, so a tool is
usable only when its major is the server's (or the backup's) or newer.  Where
ebk looks, in order:

1. ``postgres.bin_dir`` when set: the only place; a missing or too old tool there
   is a configuration error (ebk does not silently use another one);
2. the per-major bin dirs of Debian/Ubuntu packages, /usr/lib/postgresql/<N>/bin,
   the server's own major first, then newer ones;
3. ``PATH``.

Every candidate's ``--version`` is checked; an older one found on PATH is named
in the error, so the operator sees why it was not used.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ebk.childenv import child_env
from ebk.errors import ConfigError, PostgresError

DEBIAN_ROOT = Path("/usr/lib/postgresql")
_VERSION = re.compile(rb"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


def tool_major(path: str) -> int | None:
    """The major version a PostgreSQL program reports, None when it says nothing usable."""
    try:
        proc = subprocess.run(
            [path, "--version"],
            capture_output=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
            env=child_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        return None
    return int(match.group(1))


def _debian_dirs(major: int, root: Path) -> list[Path]:
    """/usr/lib/postgresql/<N>/bin for N >= major, the exact major first."""
    found: list[tuple[int, Path]] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        if entry.name.isdigit() and int(entry.name) >= major:
            found.append((int(entry.name), entry / "bin"))
    return [path for _, path in sorted(found)]


def find_tool(name: str, major: int, bin_dir: str = "", *, debian_root: Path = DEBIAN_ROOT) -> str:
    """Path of ``name`` from PostgreSQL ``major`` or newer (see the module docstring)."""
    if bin_dir:
        candidate = Path(bin_dir) / name
        if not candidate.is_file():
            raise ConfigError(
                f"postgres.bin_dir {bin_dir} has no {name}",
                hint=f"point postgres.bin_dir at the bin dir of PostgreSQL {major} (or newer) "
                "client tools, or leave it empty to search "
                "/usr/lib/postgresql/<major>/bin and PATH",
            )
        found = tool_major(str(candidate))
        if found is None or found < major:
            what = (
                "does not report a PostgreSQL version"
                if found is None
                else f"is from PostgreSQL {found}"
            )
            raise ConfigError(
                f"{candidate} {what}; the server (or backup) is PostgreSQL {major}",
                hint=f"{name} must be from PostgreSQL {major} or newer: install "
                f"postgresql-client-{major} and set postgres.bin_dir to its bin dir "
                f"(Debian: /usr/lib/postgresql/{major}/bin)",
            )
        return str(candidate)
    for directory in _debian_dirs(major, debian_root):
        candidate = directory / name
        if candidate.is_file():
            found = tool_major(str(candidate))
            if found is not None and found >= major:
                return str(candidate)
    rejected = ""
    on_path = shutil.which(name)
    if on_path:
        found = tool_major(on_path)
        if found is not None and found >= major:
            return on_path
        rejected = (
            f" ({on_path} on PATH is PostgreSQL {found}, older than the server)"
            if found is not None
            else f" ({on_path} on PATH does not report a PostgreSQL version)"
        )
    raise PostgresError(
        f"cannot find {name} of PostgreSQL {major} or newer{rejected}",
        hint=f"install postgresql-client-{major} (or newer), or set postgres.bin_dir "
        "to the bin dir of matching client tools",
    )
