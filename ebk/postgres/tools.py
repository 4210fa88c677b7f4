"""Locate PostgreSQL client programs that match the server's major version."""

from __future__ import annotations

import shutil
from pathlib import Path

from ebk.errors import PostgresError


def find_tool(name: str, major: int, bin_dir: str = "") -> str:
    """pg_dump must not be older than the server; Debian keeps one bin dir per major."""
    candidates = []
    if bin_dir:
        candidates.append(Path(bin_dir) / name)
    candidates.append(Path(f"/usr/lib/postgresql/{major}/bin") / name)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise PostgresError(
        f"cannot find {name} for PostgreSQL {major}",
        hint=f"install postgresql-client-{major}, or set postgres.bin_dir",
    )
