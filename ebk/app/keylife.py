"""The KEK lifecycle on the key policy: status, rotate, rewrap, retire, and their audit trail.

- status: which KEK version wraps each backup, how old the current version is,
  when rotation is due (keys.rotation_period), which versions may be retired
  (nothing depends on them and keys.retire_after has passed since the last
  complete rewrap), and which backups are stranded (wrapped only under a
  retired or missing version).
- rewrap: every key object (and the writer key) moved to the newest version
  with the provider's own operation (Transit rewrap, KMS ReEncrypt), under the
  repository lease, by a bounded worker pool behind a rate limit.  Each key
  object is replaced by one atomic put: the old wrap stays in place, and valid,
  until the new one is durable; a slot already under the newest version is left
  alone, so a re-run after a crash (kill -9) continues where it stopped.
  Backups that commit while it runs are picked up by further passes.
- rotate: the provider's rotation, then a rewrap.
- retire: the provider's retirement of versions nothing depends on.
Each completed step appends a signed event to the key-event log.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from ebk.config import parse_duration
from ebk.errors import (
    BackupNotFound,
    EbkError,
    IntegrityError,
    Interrupted,
    KeyProviderError,
    WrongKey,
)
from ebk.keys.base import KeyProvider, WrappedKey
from ebk.keys.envelope import KeyObject
from ebk.keys.lifecycle import KekInfo, KeyLifecycle
from ebk.repository import Repository
from ebk.repository.lease import RepositoryLease
from ebk.repository.wal import signed_wal_key, wal_key_context, wal_store
from ebk.repository.writer import rewrap_writer_key, writer_key_slots
from ebk.runtime import Runtime

log = structlog.get_logger("ebk.keys")

MAX_PASSES = 5


def lifecycle_of(provider: KeyProvider) -> KeyLifecycle:
    if not isinstance(provider, KeyLifecycle):
        raise KeyProviderError(f"key provider {provider.name} has no KEK versions to manage")
    return provider


class RateLimit:
    """At most ``rate`` acquisitions per second across threads (0: unlimited)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


# -- scanning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupKeys:
    """The KEK versions one backup's data key is wrapped under (primary provider only)."""

    backup_id: str
    start_time: str
    versions: tuple[str, ...]
    recovery_slots: int


def _scan_one(
    repo: Repository, life: KeyLifecycle, provider: KeyProvider, manifest_id: str, start: str
) -> BackupKeys | None:
    try:
        key_object = repo.read_key_object(manifest_id)
    except BackupNotFound:
        return None  # shredded or deleted meanwhile
    except IntegrityError:
        return BackupKeys(manifest_id, start, (), 0)  # damaged: under no usable version
    own = tuple(life.version_of(s) for s in key_object.slots if provider.owns(s))
    recovery = sum(1 for s in key_object.slots if s.provider == "recovery")
    return BackupKeys(manifest_id, start, own, recovery)


def scan_backups(
    repo: Repository, provider: KeyProvider, *, workers: int = 8
) -> tuple[list[BackupKeys], str | None]:
    """Every complete backup's key versions, and the writer key's version."""
    life = lifecycle_of(provider)
    catalog = repo.list_backups()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = pool.map(
            lambda m: _scan_one(repo, life, provider, m.backup_id, m.start_time), catalog.backups
        )
        rows = [r for r in found if r is not None]
    writer = None
    try:
        slots = writer_key_slots(repo.read_writer_key_object())
        writer = next((life.version_of(s) for s in slots if provider.owns(s)), None)
    except EbkError:
        pass
    return rows, writer


# -- status --------------------------------------------------------------------------------


@dataclass
class KeyStatus:
    info: KekInfo
    now: datetime
    rotation_period: timedelta
    retire_after: timedelta
    backups: list[BackupKeys]
    writer_version: str | None
    last_rewrap: datetime | None
    counts: dict[str, int] = field(default_factory=dict)
    retirable: list[str] = field(default_factory=list)
    stranded: list[BackupKeys] = field(default_factory=list)
    retire_waits: dict[str, datetime] = field(default_factory=dict)
    # WAL data keys (issue 13): key id -> the KEK versions it is wrapped under.
    wal_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    wal_counts: dict[str, int] = field(default_factory=dict)
    wal_stranded: list[str] = field(default_factory=list)

    @property
    def current_created(self) -> datetime | None:
        current = self.info.current
        return self.info.material_created or (current.created if current else None)

    @property
    def age(self) -> timedelta | None:
        created = self.current_created
        return self.now - created if created else None

    @property
    def due(self) -> datetime | None:
        created = self.current_created
        return created + self.rotation_period if created else None

    @property
    def overdue(self) -> bool:
        return self.due is not None and self.now >= self.due

    @property
    def material_created_after_rewrap(self) -> bool:
        """Key material newer than the last complete rewrap (a rotation inside one KMS key)."""
        made = self.info.material_created
        return made is not None and (self.last_rewrap is None or self.last_rewrap < made)

    @property
    def pending_rewrap(self) -> int:
        current = self.info.current.id if self.info.current else None
        return sum(1 for b in self.backups if b.versions and current not in b.versions)

    @property
    def ok(self) -> bool:
        return not self.overdue and not self.stranded and not self.wal_stranded

    def exposed(self, version: str) -> list[BackupKeys]:
        """Backups whose data key is or was wrapped under ``version``: every backup that
        started before the next version existed (a rewrap moved older ones onto it too),
        and any wrapped under it now."""
        order = [v.id for v in self.info.versions]
        superseded = None
        if version in order and order.index(version) + 1 < len(order):
            superseded = self.info.versions[order.index(version) + 1].created
        out = []
        for b in self.backups:
            started = _parse(b.start_time)
            earlier = superseded is None or (started is not None and started < superseded)
            if version in b.versions or (version in order and earlier):
                out.append(b)
        return out

    def to_json(self) -> dict[str, Any]:
        current = self.info.current
        return {
            "ok": self.ok,
            "provider": self.info.provider,
            "key": self.info.key,
            "current_version": current.id if current else None,
            "current_created": _iso(self.current_created),
            "age_seconds": int(self.age.total_seconds()) if self.age else None,
            "rotation_period_seconds": int(self.rotation_period.total_seconds()),
            "rotation_due": _iso(self.due),
            "overdue": self.overdue,
            "versions": [
                {
                    "version": v.id,
                    "created": _iso(v.created),
                    "usable": v.usable,
                    "current": v.current,
                    "backups": self.counts.get(v.id, 0),
                    "wal_keys": self.wal_counts.get(v.id, 0),
                    "writer_key": v.id == self.writer_version,
                    "retirable": v.id in self.retirable,
                    "retirable_after": _iso(self.retire_waits.get(v.id)),
                }
                for v in self.info.versions
            ],
            "unknown_versions": {
                k: n for k, n in self.counts.items() if k not in self.info.by_id()
            },
            "backups": len(self.backups),
            "pending_rewrap": self.pending_rewrap,
            "last_rewrap": _iso(self.last_rewrap),
            "stranded": [
                {"backup_id": b.backup_id, "versions": list(b.versions)} for b in self.stranded
            ],
            "wal_keys": len(self.wal_keys),
            "wal_stranded": [
                {"wal_key_id": k, "versions": list(self.wal_keys[k])} for k in self.wal_stranded
            ],
            "notes": self.info.notes,
        }


def _parse(text: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None


def last_rewrap_time(runtime: Runtime) -> datetime | None:
    """The time of the newest signed, complete rewrap event (None without one)."""
    try:
        listing = runtime.repository.key_events().read(runtime.trusted_writers())
    except EbkError:
        return None
    times = [
        datetime.fromisoformat(e.time)
        for e in listing.events
        if e.kind == "rewrap" and e.details.get("complete")
    ]
    return max(times) if times else None


def _refuse_stranded_writer_key(
    runtime: Runtime, life: KeyLifecycle, provider: KeyProvider, info: KekInfo
) -> None:
    """Listing needs the writer key unless it is pinned: say plainly when its KEK is gone."""
    if runtime.config.repository.writer_keys:
        return
    try:
        slots = writer_key_slots(runtime.repository.read_writer_key_object())
    except EbkError:
        return
    usable = {v.id for v in info.versions if v.usable}
    versions = [life.version_of(s) for s in slots if provider.owns(s)]
    if versions and not any(v in usable for v in versions):
        raise KeyProviderError(
            f"the repository's writer key is wrapped only under {', '.join(versions)}, which "
            f"{info.key} no longer has (retired or missing): no backup can be listed or signed",
            hint="bring that KEK version back (key file backup; lower Transit "
            "min_decryption_version), then `ebk keys rewrap`; backups stay restorable by id "
            "with --recovery-key",
        )


def key_status(runtime: Runtime, *, now: datetime | None = None) -> KeyStatus:
    cfg = runtime.config.keys
    provider = runtime.key_providers[0]
    life = lifecycle_of(provider)
    info = life.kek_info()
    _refuse_stranded_writer_key(runtime, life, provider, info)
    backups, writer_version = scan_backups(runtime.repository, provider, workers=cfg.rewrap_workers)
    status = KeyStatus(
        info,
        now or datetime.now(UTC),
        timedelta(seconds=parse_duration(cfg.rotation_period, "keys.rotation_period")),
        timedelta(seconds=parse_duration(cfg.retire_after, "keys.retire_after")),
        backups,
        writer_version,
        last_rewrap_time(runtime),
    )
    counts: Counter[str] = Counter()
    for b in backups:
        counts.update(set(b.versions))
    status.counts = dict(counts)
    usable = {v.id for v in info.versions if v.usable}
    status.stranded = [b for b in backups if not any(v in usable for v in b.versions)]
    status.wal_keys = scan_wal_keys(runtime, provider)
    wal_counts: Counter[str] = Counter()
    for wal_versions in status.wal_keys.values():
        wal_counts.update(set(wal_versions))
    status.wal_counts = dict(wal_counts)
    status.wal_stranded = [
        k for k, vs in status.wal_keys.items() if not any(v in usable for v in vs)
    ]
    versions = info.versions
    for i, v in enumerate(versions):
        if v.current or not v.usable or counts.get(v.id) or v.id == writer_version:
            continue
        if wal_counts.get(v.id):
            continue
        successor = versions[i + 1].created if i + 1 < len(versions) else None
        since = max([t for t in (successor, status.last_rewrap) if t is not None], default=None)
        ready_at = since + status.retire_after if since else None
        if ready_at is not None and ready_at <= status.now:
            status.retirable.append(v.id)
        elif ready_at is not None:
            status.retire_waits[v.id] = ready_at
    return status


def scan_wal_keys(runtime: Runtime, provider: KeyProvider) -> dict[str, tuple[str, ...]]:
    """The KEK versions each authentic WAL data key is wrapped under (the WAL archive needs
    them for every point-in-time restore); a forged key object is logged, never counted."""
    life = lifecycle_of(provider)
    found: dict[str, tuple[str, ...]] = {}
    for item in wal_store(runtime.repository).verified_keys(runtime.trusted_writers()):
        if isinstance(item, IntegrityError):
            log.warning("WAL key object ignored", reason=item.message)
            continue
        found[item.key_id] = tuple(life.version_of(s) for s in item.slots if provider.owns(s))
    return found


def rewrap_wal_keys(
    runtime: Runtime,
    lease: RepositoryLease,
    current: str,
    *,
    force: bool,
    limit: RateLimit,
    cancel: threading.Event | None = None,
) -> tuple[int, dict[str, str]]:
    """Re-wrap (and re-sign) every WAL data key not yet under ``current``."""
    provider = runtime.key_providers[0]
    life = lifecycle_of(provider)
    store = wal_store(runtime.repository)
    rewrapped, failed = 0, {}
    for item in store.verified_keys(runtime.trusted_writers()):
        if isinstance(item, IntegrityError):
            continue  # not ours to touch: never re-signed
        if cancel is not None and cancel.is_set():
            raise Interrupted("rewrap interrupted; run `ebk keys rewrap` again to continue")
        context = wal_key_context(item.repository_id, item.key_id)
        slots, moved = [], False
        for slot in item.slots:
            if provider.owns(slot) and (force or life.version_of(slot) != current):
                limit.acquire()
                try:
                    slots.append(provider.rewrap(slot, context))
                except WrongKey as exc:
                    failed[item.key_id] = exc.message
                    break
                moved = True
            else:
                slots.append(slot)
        if moved and item.key_id not in failed:
            raw = signed_wal_key(
                runtime.writer_key(), item.repository_id, item.key_id, item.created, slots
            )
            store.replace_key(item.key_id, raw, lease)
            rewrapped += 1
    return rewrapped, failed


# -- rewrap --------------------------------------------------------------------------------


@dataclass
class RewrapReport:
    current: str
    rewrapped: int = 0
    already_current: int = 0
    passes: int = 0
    seconds: float = 0.0
    moved_from: Counter[str] = field(default_factory=Counter)
    writer_key_rewrapped: bool = False
    wal_keys_rewrapped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # backup id -> why


def rewrap_all_backups(
    runtime: Runtime,
    *,
    force: bool = False,
    workers: int | None = None,
    rate: float | None = None,
    cancel: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
    purpose: str = "ebk keys rewrap",
) -> RewrapReport:
    """Rewrap every backup's data key (and the writer key) under the newest KEK version."""
    cfg = runtime.config.keys
    repo = runtime.repository
    provider = runtime.key_providers[0]
    life = lifecycle_of(provider)
    limit = RateLimit(cfg.rewrap_rate if rate is None else rate)
    started = time.monotonic()
    force_wal = force
    with repo.lease(purpose) as lease:
        marker = repo.require_initialized()
        raw = repo.read_writer_key_object()
        limit.acquire()
        updated = rewrap_writer_key(raw, provider, repository_id=str(marker.repository_id))
        if updated is not None:
            lease.check()
            repo.replace_writer_key_object(updated, lease)
        slots = writer_key_slots(updated or raw)
        current = next((life.version_of(s) for s in slots if provider.owns(s)), None)
        if current is None:  # a writer key wrapped by another provider: ask the provider
            info_current = life.kek_info().current
            current = info_current.id if info_current else ""
        report = RewrapReport(current, writer_key_rewrapped=updated is not None)

        def one(backup_id: str) -> tuple[str, list[str]]:
            if cancel is not None and cancel.is_set():
                return "cancelled", []
            try:
                key_object = repo.read_key_object(backup_id)
            except BackupNotFound:
                return "gone", []
            except IntegrityError as exc:  # a damaged key object: report it, do the rest
                return "failed", [exc.message]
            moved = []
            slots: list[WrappedKey] = []
            for slot in key_object.slots:
                if provider.owns(slot) and (force or life.version_of(slot) != current):
                    limit.acquire()
                    try:
                        new = provider.rewrap(slot, key_object.context)
                    except WrongKey as exc:  # modified or foreign: never blocks the others
                        return "failed", [exc.message]
                    moved.append(life.version_of(slot))
                    slots.append(new)
                else:
                    slots.append(slot)
            if not moved:
                return "current", []
            updated_object = KeyObject(
                key_object.backup_id, key_object.dek_id, key_object.context, slots
            )
            repo.replace_key_object(updated_object, lease)  # checks the lease first
            return "rewrapped", moved

        done: set[str] = set()
        pool_size = workers or cfg.rewrap_workers
        with ThreadPoolExecutor(max_workers=pool_size) as pool:
            while report.passes < MAX_PASSES:
                ids = _candidates(repo) - done
                if not ids:
                    break
                report.passes += 1
                for backup_id, (outcome, moved) in zip(
                    sorted(ids), pool.map(one, sorted(ids)), strict=True
                ):
                    if outcome == "cancelled":
                        raise Interrupted(
                            f"rewrap interrupted after {report.rewrapped} key objects; "
                            "run `ebk keys rewrap` again to continue"
                        )
                    done.add(backup_id)
                    if outcome == "rewrapped":
                        report.rewrapped += 1
                        report.moved_from.update(moved)
                    elif outcome == "current":
                        report.already_current += 1
                    elif outcome == "failed":
                        report.failed[backup_id] = moved[0]
                        log.error("key object not re-wrapped", backup_id=backup_id, error=moved[0])
                    if progress is not None:
                        progress(len(done))
                if force:
                    force = False  # later passes only see backups made after the rotation
        report.wal_keys_rewrapped, wal_failed = rewrap_wal_keys(
            runtime, lease, current, force=force_wal, limit=limit, cancel=cancel
        )
        report.failed.update(wal_failed)
        report.seconds = time.monotonic() - started
        record_event(
            runtime,
            "rewrap",
            {
                "to": current,
                "from": dict(report.moved_from),
                "rewrapped": report.rewrapped,
                "wal_keys_rewrapped": report.wal_keys_rewrapped,
                "already_current": report.already_current,
                "failed": sorted(report.failed)[:100],
                "complete": not report.failed,
            },
        )
    log.info(
        "rewrap complete",
        current=current,
        rewrapped=report.rewrapped,
        already_current=report.already_current,
        seconds=round(report.seconds, 2),
    )
    return report


def _candidates(repo: Repository) -> set[str]:
    """Complete backups, and backups being written now (their key object is already there)."""
    ids = {m.backup_id for m in repo.list_backups().backups}
    ids |= {b.backup_id for b in repo.incomplete_backups() if "key.json" in b.objects}
    return ids


def record_event(runtime: Runtime, kind: str, details: dict[str, Any]) -> None:
    """Append a signed key event; a log that cannot be written is a warning, not a failure
    (the key operation itself already happened and is durable)."""
    try:
        runtime.repository.key_events().append(kind, details, runtime.writer_key())
    except EbkError as exc:
        log.warning("could not record the key event", kind=kind, error=exc.message)


# -- rotate and retire ---------------------------------------------------------------------


def rotate_kek(runtime: Runtime) -> tuple[str, str | None]:
    """Rotate the KEK in the provider; (new version, previous version)."""
    life = lifecycle_of(runtime.key_providers[0])
    try:
        before = life.kek_info().current
    except KeyProviderError:
        before = None
    new = life.rotate_kek()
    record_event(
        runtime,
        "rotate",
        {"provider": runtime.key_providers[0].name, "new": new, "previous": before and before.id},
    )
    log.info("KEK rotated", new=new, previous=before and before.id)
    return new, before.id if before else None


def retire_versions(
    runtime: Runtime, versions: list[str] | None, *, apply: bool, status: KeyStatus | None = None
) -> list[str]:
    """Retire the named versions (default: every retirable one); refuse any still needed."""
    status = status or key_status(runtime)
    wanted = list(versions) if versions else list(status.retirable)
    if not wanted:
        return []
    known = status.info.by_id()
    for version in wanted:
        if version not in known:
            raise KeyProviderError(
                f"{version} is not a KEK version of {status.info.key}",
                hint="`ebk keys status` lists the versions",
            )
        if version not in status.retirable:
            needed = status.counts.get(version, 0)
            why = (
                "it is the current version"
                if known[version].current
                else f"{needed} backup(s) are still wrapped under it; run `ebk keys rewrap` first"
                if needed
                else "the writer key is still wrapped under it; run `ebk keys rewrap` first"
                if version == status.writer_version
                else f"{status.wal_counts[version]} WAL data key(s) are still wrapped under it "
                "(point-in-time restores need them); run `ebk keys rewrap` first"
                if status.wal_counts.get(version)
                else "it is already retired"
                if not known[version].usable
                else f"keys.retire_after has not passed (retirable after "
                f"{_iso(status.retire_waits.get(version)) or 'the next rewrap'})"
            )
            raise KeyProviderError(f"refusing to retire {version}: {why}")
    messages = lifecycle_of(runtime.key_providers[0]).retire_versions(wanted, apply=apply)
    if apply:
        record_event(runtime, "retire", {"versions": wanted, "actions": messages[:20]})
    return messages
