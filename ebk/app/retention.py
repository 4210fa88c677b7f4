"""Retention: which complete backups to keep, and why.

``plan_retention`` is a pure function of the backups, the policy and "now", so
every rule is testable on synthetic dates.  Rules (a backup is kept when any
rule keeps it; each kept backup carries every rule that keeps it):

- newest: the newest complete backup of each (cluster, kind) is always kept;
- keep_last N: the N newest;
- keep_daily / keep_weekly / keep_monthly N: the newest backup of each of the N
  most recent UTC days / ISO weeks / months that have a backup (gaps do not
  consume the window, so old backups survive when backups stop);
- min_age: a backup younger than this is never deleted;
- chain: a kept incremental backup keeps every backup it builds on (its parent,
  the parent's parent, ... the full backup), so no kept backup loses its chain.

Physical and logical backups (and backups of different clusters sharing a
repository) are counted separately.  ``apply_retention`` deletes under the
repository lease, re-checking it before every deletion.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from ebk.app.verified_keep import keep_newest_verified
from ebk.config import RetentionConfig, parse_duration
from ebk.errors import BackupNotFound, Interrupted
from ebk.manifest import Manifest
from ebk.repository import Repository

log = structlog.get_logger("ebk.retention")


class BackupLike(Protocol):
    """What retention needs of a manifest."""

    @property
    def backup_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def start_time(self) -> str: ...

    @property
    def system_identifier(self) -> str: ...


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 7
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6
    min_age: timedelta = timedelta(days=1)
    pitr_window: timedelta = timedelta(0)  # physical backups covering it are kept (WAL archive)

    @classmethod
    def from_config(cls, cfg: RetentionConfig) -> RetentionPolicy:
        return cls(
            cfg.keep_last,
            cfg.keep_daily,
            cfg.keep_weekly,
            cfg.keep_monthly,
            timedelta(seconds=parse_duration(cfg.min_age, "retention.min_age")),
            timedelta(seconds=parse_duration(cfg.pitr_window, "retention.pitr_window")),
        )

    def describe(self) -> str:
        return (
            f"keep_last={self.keep_last} keep_daily={self.keep_daily} "
            f"keep_weekly={self.keep_weekly} keep_monthly={self.keep_monthly} "
            f"min_age={human_age(self.min_age)}"
        )


@dataclass(frozen=True)
class Decision:
    backup_id: str
    kind: str
    cluster: str
    time: datetime | None
    keep: bool
    reasons: tuple[str, ...]
    size: int = 0

    @property
    def action(self) -> str:
        return "keep" if self.keep else "delete"

    @property
    def why(self) -> str:
        return "; ".join(self.reasons)

    def to_json(self) -> dict[str, object]:
        return {
            "backup_id": self.backup_id,
            "kind": self.kind,
            "cluster": self.cluster,
            "start_time": self.time.isoformat() if self.time else None,
            "action": self.action,
            "reasons": list(self.reasons),
            "stored_size": self.size,
        }


def human_age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = "".join(
        f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if v
    )
    return text or "0s"


def _parse_time(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plan_retention(
    backups: Sequence[BackupLike], policy: RetentionPolicy, now: datetime
) -> list[Decision]:
    """Keep/delete with reasons for every backup, oldest first."""
    groups: dict[tuple[str, str], list[tuple[datetime, BackupLike]]] = {}
    reasons: dict[str, list[str]] = {b.backup_id: [] for b in backups}
    times: dict[str, datetime | None] = {}
    for b in backups:
        when = _parse_time(b.start_time)
        times[b.backup_id] = when
        if when is None:
            reasons[b.backup_id].append(
                f"start time {b.start_time!r} is unreadable; never deleted automatically"
            )
            continue
        groups.setdefault((b.system_identifier, b.kind), []).append((when, b))
    for members in groups.values():
        members.sort(key=lambda item: (item[0], item[1].backup_id), reverse=True)
        reasons[members[0][1].backup_id].append("newest complete backup")
        for rank, (_, b) in enumerate(members[: policy.keep_last], start=1):
            reasons[b.backup_id].append(f"keep_last: {_ordinal(rank)} newest of {policy.keep_last}")
        windows = (
            ("daily", policy.keep_daily, lambda t: t.strftime("%Y-%m-%d")),
            (
                "weekly",
                policy.keep_weekly,
                lambda t: f"{t.isocalendar().year}-W{t.isocalendar().week:02d}",
            ),
            ("monthly", policy.keep_monthly, lambda t: t.strftime("%Y-%m")),
        )
        for label, count, bucket_of in windows:
            seen: set[str] = set()
            for when, b in members:
                if len(seen) >= count:
                    break
                bucket = bucket_of(when.astimezone(UTC))
                if bucket not in seen:
                    seen.add(bucket)
                    reasons[b.backup_id].append(f"keep_{label}: newest of {bucket}")
        for when, b in members:
            age = now - when
            if age < policy.min_age:
                reasons[b.backup_id].append(
                    f"min_age: {human_age(age)} old, younger than {human_age(policy.min_age)}"
                )
    _keep_chains(backups, reasons)
    decisions = []
    for b in backups:
        kept = reasons[b.backup_id]
        decisions.append(
            Decision(
                backup_id=b.backup_id,
                kind=b.kind,
                cluster=b.system_identifier,
                time=times[b.backup_id],
                keep=bool(kept),
                reasons=tuple(kept) if kept else ("no rule keeps it",),
                size=int(getattr(b, "stored_size", 0) or 0),
            )
        )
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(decisions, key=lambda d: (d.time or epoch, d.backup_id))


def _keep_chains(backups: Sequence[BackupLike], reasons: dict[str, list[str]]) -> None:
    """Every ancestor of a kept incremental backup is kept too (ebk.chain)."""
    parent_of = {b.backup_id: getattr(b, "parent", None) for b in backups}
    done: set[str] = set()
    for b in backups:
        if not reasons[b.backup_id]:
            continue
        child, parent = b.backup_id, parent_of[b.backup_id]
        while parent is not None and parent in reasons and parent not in done:
            done.add(parent)
            reasons[parent].append(f"chain: backup {child} builds on it")
            child, parent = parent, parent_of[parent]


@dataclass
class RetentionResult:
    decisions: list[Decision]
    deleted: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    dry_run: bool = False


def _usable(repo: Repository) -> list[Manifest]:
    """The backups retention may count; what listing skipped is logged, never counted."""
    catalog = repo.list_backups()
    for problem in catalog.problems:
        log.warning("retention skipped an object", object=problem.name, reason=problem.reason)
    return catalog.backups


def _plan(
    repo: Repository, backups: list[Manifest], policy: RetentionPolicy, now: datetime
) -> list[Decision]:
    """plan_retention, then the rules that only keep more: the PITR window
    (ebk.app.walretention), the newest restore-verified backup (ebk.app.verified_keep),
    and last the chains of everything kept, so no kept incremental loses its parent."""
    from ebk.app.walretention import keep_pitr_window

    decisions = plan_retention(backups, policy, now)
    decisions = keep_pitr_window(decisions, backups, policy.pitr_window, now)
    decisions = keep_newest_verified(repo, backups, decisions)
    return _close_chains(backups, decisions)


def _close_chains(backups: Sequence[BackupLike], decisions: list[Decision]) -> list[Decision]:
    reasons = {d.backup_id: list(d.reasons) if d.keep else [] for d in decisions}
    _keep_chains(backups, reasons)
    return [
        dataclasses.replace(d, keep=True, reasons=tuple(reasons[d.backup_id]))
        if not d.keep and reasons[d.backup_id]
        else d
        for d in decisions
    ]


def apply_retention(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    cancel: threading.Event | None = None,
    purpose: str = "retention",
) -> RetentionResult:
    """Plan, and unless dry_run delete under the repository lease (checked per deletion)."""
    if dry_run:
        decisions = _plan(repo, _usable(repo), policy, now or datetime.now(UTC))
        return RetentionResult(decisions, dry_run=True)
    with repo.lease(purpose) as lease:
        # Plan under the lease: nobody else deletes between listing and deleting.
        decisions = _plan(repo, _usable(repo), policy, now or datetime.now(UTC))
        result = RetentionResult(decisions)
        # Newest first: an interrupted run never leaves an incremental without its parent.
        for decision in reversed(decisions):
            if decision.keep:
                continue
            if cancel is not None and cancel.is_set():
                raise Interrupted(
                    f"retention interrupted after {len(result.deleted)} "
                    "deletions; the rest stays until the next run"
                )
            try:
                repo.delete_backup(decision.backup_id, lease)
            except BackupNotFound:
                continue
            result.deleted.append(decision.backup_id)
            result.freed_bytes += decision.size
            log.info(
                "backup deleted by retention",
                backup_id=decision.backup_id,
                kind=decision.kind,
                stored_bytes=decision.size,
                why=decision.why,
            )
    return result
