"""Skip locally, fail in CI: the one rule for a test whose tool or component is missing.

CI (``CI=true``) installs everything through scripts/setup.sh, so a missing piece there
is a broken setup and must fail; on a developer's machine it skips with the reason.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True under CI (``CI`` set to true/1/yes/on, as CI services do)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def skip_or_fail(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere; ``reason`` says what is missing and how to get it."""
    if in_ci():
        pytest.fail(f"CI must provide this: {reason}", pytrace=False)
    pytest.skip(reason)


def need(condition: bool, what: str) -> None:
    """``skip_or_fail`` unless ``condition`` holds; ``what`` names the missing piece."""
    if not condition:
        skip_or_fail(f"needs {what}")


def need_root() -> None:
    need(os.geteuid() == 0, "root (loop devices, mounts)")
