"""The daemon's `keys` job: hold the key policy on schedule.

Each run reads `ebk keys status`; when rotation is due it rotates the KEK and
re-wraps (where this daemon holds the rights: Transit rotate, KMS
RotateKeyOnDemand, a writable key file), when backups are under an older
version (a rotation by Vault's auto_rotate_period, by KMS, or by an admin) it
re-wraps, and otherwise only reports.  What it saw is exported as metrics
(ebk_kek_age_seconds, ebk_backups_by_kek_version{version}) and as a /readyz
reason while rotation is overdue or a backup is stranded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ebk.app.keylife import (
    KeyStatus,
    key_status,
    lifecycle_of,
    rewrap_all_backups,
    rotate_kek,
)
from ebk.config import Config, JobConfig
from ebk.daemon.jobs import JobContext, JobKind, JobResult
from ebk.errors import ConfigError, KeyAccessDenied, KeyProviderError


class KeyPolicyState(Collector):
    """The last key status a `keys` job saw: metrics at scrape time, the readiness reason."""

    def __init__(self) -> None:
        self._status: KeyStatus | None = None
        self._lock = threading.Lock()

    def update(self, status: KeyStatus) -> None:
        with self._lock:
            self._status = status

    def not_ready_reason(self) -> str:
        with self._lock:
            st = self._status
        if st is None:
            return ""
        if st.stranded:
            return (
                f"{len(st.stranded)} backup(s) are wrapped only under a retired or missing "
                "KEK version (`ebk keys status`)"
            )
        if st.overdue:
            return f"KEK rotation overdue since {st.due:%Y-%m-%d} (`ebk keys rotate`)"
        return ""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            st = self._status
        age = GaugeMetricFamily(
            "ebk_kek_age_seconds", "Age of the current KEK version (key material)", labels=[]
        )
        by_version = GaugeMetricFamily(
            "ebk_backups_by_kek_version",
            "Backups whose data key is wrapped under each KEK version",
            labels=["version"],
        )
        if st is not None:
            if st.age is not None:
                age.add_metric([], st.age.total_seconds())
            for v in st.info.versions:
                by_version.add_metric([v.id], st.counts.get(v.id, 0))
            for version, count in st.counts.items():
                if version not in st.info.by_id():
                    by_version.add_metric([version], count)
        yield age
        yield by_version


def run_keys(ctx: JobContext, state: KeyPolicyState) -> JobResult:
    runtime = ctx.runtime
    st = key_status(runtime)
    state.update(st)
    life = lifecycle_of(runtime.key_providers[0])
    purpose = f"daemon job {ctx.job.name}"
    did = "checked"
    if st.overdue:
        try:
            new, _ = rotate_kek(runtime)
        except KeyAccessDenied as exc:
            raise KeyProviderError(
                f"KEK rotation is overdue (due {st.due:%Y-%m-%d}) and this daemon may not "
                f"rotate: {exc.message}",
                hint="rotate with an admin (docs/key-management.md); the next run re-wraps",
            ) from None
        report = rewrap_all_backups(
            runtime, force=life.rewrap_needs_force, cancel=ctx.cancel, purpose=purpose
        )
        did = f"rotated to {new}, re-wrapped {report.rewrapped}"
    else:
        material = st.material_created_after_rewrap
        if st.pending_rewrap or (life.rewrap_needs_force and material):
            report = rewrap_all_backups(
                runtime,
                force=life.rewrap_needs_force and material,
                cancel=ctx.cancel,
                purpose=purpose,
            )
            did = f"re-wrapped {report.rewrapped} under {report.current}"
    after = key_status(runtime)
    state.update(after)
    if after.stranded:
        raise KeyProviderError(
            f"{len(after.stranded)} backup(s) are wrapped only under a retired or missing KEK "
            "version",
            hint="`ebk keys status` lists them; bring the version back, then `ebk keys rewrap`",
        )
    current = after.info.current.id if after.info.current else "?"
    return JobResult(0, None, f"{did}; current {current}, due {after.due and after.due.date()}")


def _validate(job: JobConfig, config: Config) -> None:
    del config
    if job.databases:
        raise ConfigError(f"daemon job {job.name!r}: the keys job takes no databases")


def key_job_kind(state: KeyPolicyState) -> JobKind:
    return JobKind(
        lambda ctx: run_keys(ctx, state),
        _validate,
        summary="hold the key policy: rotate and re-wrap when due, else report",
    )
