"""The preflight gate that `ebk backup`, `ebk restore` and the daemon pass through."""

from __future__ import annotations

from pathlib import Path

from ebk.config import Config


def enforce(config: Config, *, purpose: str, restore_target: Path | None = None) -> None:
    """Refuse (PreflightFailed) under policy 'require' when a path is not proven encrypted.

    Filled in by the preflight work (issue 5); until then it checks nothing.
    """
    del config, purpose, restore_target
