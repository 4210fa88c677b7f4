"""Run preflight for a purpose and render the result for people."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ebk.config import Config
from ebk.preflight.inspect import Inspector
from ebk.preflight.model import PathVerdict, Report, Target
from ebk.preflight.mountinfo import mounts_below
from ebk.preflight.paths import FIX_VOLUME, targets_for

NESTED_ROLES = ("data_directory", "tablespace", "restore_target", "pg_wal")


def run_preflight(
    config: Config,
    *,
    purpose: str,
    restore_target: Path | None = None,
    tablespace_targets: Sequence[Path] = (),
    inspector: Inspector | None = None,
) -> Report:
    """Every target, plus any mount found inside a data directory or tablespace."""
    inspector = inspector or Inspector.from_config(config.preflight)
    report = Report(purpose)
    for target in targets_for(
        config,
        purpose=purpose,
        restore_target=restore_target,
        tablespace_targets=tablespace_targets,
    ):
        verdict = inspector.inspect(target)
        report.verdicts.append(verdict)
        if target.role in NESTED_ROLES and verdict.resolved and not verdict.note:
            for mount in mounts_below(verdict.resolved, inspector.mounts()):
                report.verdicts.append(
                    inspector.inspect(
                        Target(
                            target.role,
                            mount.mount_point,
                            f"mount inside {target.label}",
                            fix=f"{mount.mount_point} is mounted inside "
                            f"{verdict.resolved}: {FIX_VOLUME}",
                        )
                    )
                )
    return report


def failure_lines(verdicts: list[PathVerdict], *, evidence: bool = True) -> list[str]:
    """What an operator reads when preflight refuses: path, why (unless a table above
    already showed it), how to fix."""
    lines = []
    for v in verdicts:
        where = v.target.path or "(unresolved)"
        why = f" — {v.summary()}" if evidence else ""
        lines.append(f"{v.target.label or v.target.role} {where}: {v.status}{why}")
        if v.target.fix:
            lines.append(f"    fix: {v.target.fix}")
    return lines


def render_table(report: Report) -> list[str]:
    rows = []
    for v in report.verdicts:
        by = v.summary()
        rows.append(
            (
                str(v.status).upper(),
                v.target.label or v.target.role,
                v.target.path or "-",
                v.mount_point or "-",
                by,
            )
        )
    headers = ("STATUS", "WHAT", "PATH", "MOUNT", "EVIDENCE")
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
        for i, h in enumerate(headers[:-1])
    ]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(headers[:-1], widths, strict=True))
        + "  "
        + headers[-1]
    ]
    for r in rows:
        out.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        )
    for v in report.verdicts:
        enc = v.encrypted_by()
        if enc:
            keys = "; ".join(dict.fromkeys(e.key_location for e in enc if e.key_location))
            ciphers = ", ".join(dict.fromkeys(e.cipher for e in enc if e.cipher))
            extra = [
                x
                for x in (f"cipher {ciphers}" if ciphers else "", f"key: {keys}" if keys else "")
                if x
            ]
            if extra:
                out.append(f"  {v.target.path}: {' · '.join(extra)}")
    failing = report.failing()
    if failing:
        out.append("")
        out.append(
            f"{len(failing)} of {len(report.verdicts)} paths are not proven encrypted "
            "(unknown counts as unencrypted):"
        )
        out.extend(f"  {line}" for line in failure_lines(failing, evidence=False))
    else:
        out.append("")
        out.append(f"all {len(report.verdicts)} paths are encrypted")
    return out
