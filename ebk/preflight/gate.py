"""The preflight gate that `ebk backup`, `ebk restore` and the daemon pass through."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ebk.config import Config
from ebk.errors import PreflightFailed

if TYPE_CHECKING:  # the detectors load only when the policy asks for a check
    from ebk.preflight.inspect import Inspector
    from ebk.preflight.model import Report

log = structlog.get_logger("ebk.preflight")


def enforce(
    config: Config,
    *,
    purpose: str,
    restore_target: Path | None = None,
    tablespace_targets: Sequence[Path] = (),
    inspector: Inspector | None = None,
) -> Report | None:
    """Refuse (PreflightFailed) under policy 'require' when a path is not proven encrypted.

    Under 'warn' the same findings are logged and the command goes on; under
    'off' nothing is checked.  Returns the report for callers that record it.
    """
    policy = config.preflight.policy
    if policy == "off":
        return None
    from ebk.preflight.report import failure_lines, run_preflight

    report = run_preflight(
        config,
        purpose=purpose,
        restore_target=restore_target,
        tablespace_targets=tablespace_targets,
        inspector=inspector,
    )
    failing = report.failing()
    if not failing:
        log.info(
            "preflight passed", purpose=purpose, paths=[v.target.path for v in report.verdicts]
        )
        return report
    lines = failure_lines(failing)
    if policy == "require":
        raise PreflightFailed(
            f"preflight refused the {purpose}: {len(failing)} path(s) holding database bytes "
            "are not proven encrypted (unknown counts as unencrypted):\n  " + "\n  ".join(lines),
            hint="fix the storage as shown, check with `ebk preflight`, or set "
            'preflight.policy = "warn" to go on while logging the risk',
        )
    for v in failing:
        log.warning(
            "preflight: path not proven encrypted",
            purpose=purpose,
            role=v.target.role,
            path=v.target.path,
            status=str(v.status),
            evidence=v.summary(),
            fix=v.target.fix,
        )
    return report
