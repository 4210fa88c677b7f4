"""The one way the preflight runs an inspection tool (cryptsetup, dmsetup, zfs, zpool)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from ebk.childenv import child_env

Runner = Callable[[list[str]], str]


def run_command(argv: list[str]) -> str:
    """Run a read-only inspection tool; its failure is reported (OSError), never fatal."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False, env=child_env()
        )
    except subprocess.SubprocessError as exc:
        raise OSError(f"{argv[0]}: {exc}") from None
    if proc.returncode != 0:
        raise OSError(f"{argv[0]} exited {proc.returncode}: {proc.stderr.strip()[:200]}")
    return proc.stdout
