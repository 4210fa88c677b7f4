"""The daemon's `verify` job kind, its metrics and its readiness reason.

A ``kind = "verify"`` job restores, by default, the newest backup of each kind
that has no passing restore verification yet (``ebk verify`` at level
``restore``), bounded by ``verify.max_duration`` and the daemon's cancel flag.

Metrics (on the daemon's registry):

- ``ebk_verify_last_success_timestamp_seconds``: end of the last verify run in
  which every verified backup passed;
- ``ebk_verify_failures_total{check}``: failed (or incomplete) checks, by check;
- ``ebk_newest_verified_backup_age_seconds``: age (since it was taken) of the
  newest backup with a passing restore verification, computed at scrape time.

/readyz says not ready when that age passes ``verify.max_age`` (known after
the first verify run of this daemon).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ebk.app.verify import (
    newest_unverified_per_kind,
    newest_verified,
    statuses,
    verify_backups,
)
from ebk.config import Config, JobConfig, parse_duration
from ebk.daemon.jobs import JobContext, JobKind, JobResult
from ebk.errors import ConfigError, IntegrityError
from ebk.runtime import Runtime

CHECKS = (
    "authentication",
    "chunks",
    "restore",
    "pg_restore",
    "pg_verifybackup",
    "postgres_start",
    "pg_amcheck",
    "fingerprints",
)


class _AgeCollector(Collector):
    def __init__(self, monitor: VerifyMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "ebk_newest_verified_backup_age_seconds",
            "Age of the newest backup that passed a restore verification (since it was taken)",
        )
        age = self._monitor.newest_age()
        if age is not None:
            family.add_metric([], age)
        return [family]


class VerifyMonitor:
    """Verify metrics and the newest verified backup, shared by the job and /readyz."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_success = Gauge(
            "ebk_verify_last_success_timestamp_seconds",
            "End of the last verify run in which every verified backup passed (Unix time)",
            registry=registry,
        )
        self.failures = Counter(
            "ebk_verify_failures",
            "Failed or incomplete verification checks, by check",
            ["check"],
            registry=registry,
        )
        for check in CHECKS:
            self.failures.labels(check)
        self._lock = threading.Lock()
        self._newest_taken: float | None = None  # start time of the newest verified backup
        self._max_age: float = 0.0
        registry.register(_AgeCollector(self))

    def newest_age(self) -> float | None:
        with self._lock:
            taken = self._newest_taken
        return None if taken is None else max(time.time() - taken, 0.0)

    def refresh(self, runtime: Runtime) -> None:
        """Re-read which backup is the newest one a restore verification passed."""
        repo = runtime.repository
        backups = repo.list_backups().backups
        newest = newest_verified(backups, statuses(repo, backups), level="restore")
        taken = None
        if newest is not None:
            try:
                taken = datetime.fromisoformat(newest.start_time).timestamp()
            except ValueError:
                taken = None
        with self._lock:
            self._newest_taken = taken
            self._max_age = parse_duration(runtime.config.verify.max_age, "verify.max_age")

    def not_ready_reason(self) -> str:
        age = self.newest_age()
        with self._lock:
            limit = self._max_age
        if age is None or limit <= 0 or age <= limit:
            return ""
        return (
            f"the newest backup that passed a restore verification is {int(age // 3600)} h old "
            f"(verify.max_age {int(limit // 3600)} h); see the verify job's log"
        )

    def run(self, ctx: JobContext) -> JobResult:
        results = verify_backups(
            ctx.runtime,
            "unverified",
            level="restore",
            progress=False,
            cancel=ctx.cancel,
            select=lambda repo: newest_unverified_per_kind(repo, "restore"),
        )
        failed = []
        for r in results:
            for check in r.record.checks:
                if check.outcome in ("fail", "incomplete"):
                    self.failures.labels(check.name).inc()
                    failed.append(f"backup {r.manifest.backup_id}: {check.name} {check.outcome}")
        self.refresh(ctx.runtime)
        if failed:
            raise IntegrityError(
                "verification failed: " + "; ".join(failed),
                hint="see docs/operations.md (Verification failures); `ebk show ID` has details",
            )
        self.last_success.set(time.time())
        verified = [r.manifest.backup_id for r in results]
        return JobResult(
            sum(r.manifest.size for r in results),
            verified[-1] if verified else None,
            f"verified {len(verified)} backup(s) by restore" if verified else "nothing to verify",
        )

    def job_kind(self) -> JobKind:
        return JobKind(
            self.run,
            _validate,
            uses_cluster=False,
            summary="restore the newest unverified backups and check them (as `ebk verify`)",
        )


def _validate(job: JobConfig, config: Config) -> None:
    del config
    if job.databases:
        raise ConfigError(
            f"daemon job {job.name!r}: verify takes no databases",
            hint="it verifies every database of the newest unverified backup of each kind",
        )
