"""Prometheus metrics of the daemon, on a private registry (no global state)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

import ebk

OUTCOMES = ("success", "failure", "lock_busy", "interrupted")
NextRuns = Callable[[], Iterable[tuple[str, str, float]]]


class _NextRunCollector(Collector):
    """Reads the scheduler at scrape time, so the figure is never stale."""

    def __init__(self, source: NextRuns) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "ebk_job_next_run_timestamp_seconds",
            "When the job runs next (Unix time)",
            labels=["job", "kind"],
        )
        for job, kind, when in self._source():
            family.add_metric([job, kind], when)
        yield family


class DaemonMetrics:
    def __init__(self, next_runs: NextRuns) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["job", "kind"]
        r = self.registry
        self.last_success = Gauge(
            "ebk_job_last_success_timestamp_seconds",
            "End of the job's last successful run (Unix time)",
            labels,
            registry=r,
        )
        self.last_run = Gauge(
            "ebk_job_last_run_timestamp_seconds",
            "End of the job's last run, any outcome (Unix time)",
            labels,
            registry=r,
        )
        self.last_duration = Gauge(
            "ebk_job_last_duration_seconds", "Duration of the job's last run", labels, registry=r
        )
        self.last_bytes = Gauge(
            "ebk_job_last_bytes",
            "Bytes of the last successful run: stored bytes of a backup, freed bytes of retention",
            labels,
            registry=r,
        )
        self.bytes = Counter(
            "ebk_job_bytes", "Bytes of successful runs (as ebk_job_last_bytes)", labels, registry=r
        )
        self.runs = Counter(
            "ebk_job_runs",
            "Job runs by outcome (success, failure, lock_busy, interrupted)",
            [*labels, "outcome"],
            registry=r,
        )
        self.failures = Counter(
            "ebk_job_failures", "Failed job runs (alert on its increase)", labels, registry=r
        )
        self.running = Gauge("ebk_job_running", "1 while the job runs", labels, registry=r)
        self.ready = Gauge(
            "ebk_daemon_ready", "1 when the daemon is ready (see /readyz)", registry=r
        )
        self.reloads = Counter(
            "ebk_daemon_config_reloads", "SIGHUP reloads by outcome", ["outcome"], registry=r
        )
        Info("ebk_daemon", "ebk version", registry=r).info({"version": ebk.__version__})
        r.register(_NextRunCollector(next_runs))
        self._jobs: set[tuple[str, str]] = set()

    def declare(self, job: str, kind: str) -> None:
        """Expose a job's series at zero before its first run (alerts need them)."""
        self._jobs.add((job, kind))
        self.running.labels(job, kind).set(0)
        self.failures.labels(job, kind)
        self.bytes.labels(job, kind)
        for outcome in OUTCOMES:
            self.runs.labels(job, kind, outcome)

    def forget(self, job: str, kind: str) -> None:
        """Drop the series of a job removed by a reload."""
        self._jobs.discard((job, kind))
        for metric in (
            self.last_success,
            self.last_run,
            self.last_duration,
            self.last_bytes,
            self.bytes,
            self.failures,
            self.running,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(job, kind)
        for outcome in OUTCOMES:
            with contextlib.suppress(KeyError):
                self.runs.remove(job, kind, outcome)

    def observe(
        self, job: str, kind: str, *, outcome: str, finished: float, duration: float, nbytes: int
    ) -> None:
        self.runs.labels(job, kind, outcome).inc()
        self.last_run.labels(job, kind).set(finished)
        self.last_duration.labels(job, kind).set(duration)
        if outcome == "success":
            self.last_success.labels(job, kind).set(finished)
            self.last_bytes.labels(job, kind).set(nbytes)
            self.bytes.labels(job, kind).inc(nbytes)
        elif outcome == "failure":
            self.failures.labels(job, kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
