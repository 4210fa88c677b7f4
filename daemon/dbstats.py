"""The database's own throughput and I/O timings, split into inside and outside backup
windows, so an operator can see (and alert on) what backups cost the database.

At every scrape the collector reads pg_stat_database (summed over databases) and adds
the change since the previous scrape to counters labelled window="backup" when a
backup job ran at either scrape, else window="outside"; ebk_pg_window_seconds_total
counts the wall time attributed to each window, so a rate inside a window is
increase(counter{window=W}) / increase(ebk_pg_window_seconds_total{window=W}).
I/O timings need track_io_timing = on in PostgreSQL (else they stay 0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ebk.config import PostgresConfig
from ebk.postgres.connection import conninfo

WINDOWS = ("backup", "outside")
QUERY = (
    "SELECT coalesce(sum(xact_commit), 0), coalesce(sum(xact_rollback), 0), "
    "coalesce(sum(blks_read), 0), coalesce(sum(blk_read_time), 0) / 1000.0, "
    "coalesce(sum(blk_write_time), 0) / 1000.0 FROM pg_stat_database"
)
# name, help; the order of QUERY's columns
SERIES = (
    ("ebk_pg_xact_commit", "Committed transactions of the database (pg_stat_database)"),
    ("ebk_pg_xact_rollback", "Rolled back transactions of the database"),
    ("ebk_pg_blks_read", "Blocks PostgreSQL read from the OS/disk"),
    ("ebk_pg_blk_read_seconds", "Time spent reading blocks (track_io_timing)"),
    ("ebk_pg_blk_write_seconds", "Time spent writing blocks (track_io_timing)"),
)
CONNECT_TIMEOUT = 5


@dataclass
class WindowedStats:
    """Accumulates deltas of cumulative counters into per-window totals."""

    totals: dict[str, list[float]] = field(
        default_factory=lambda: {w: [0.0] * (len(SERIES) + 1) for w in WINDOWS}
    )
    _last: list[float] | None = None
    _last_at: float = 0.0
    _last_in_backup: bool = False

    def add(self, values: list[float], now: float, in_backup: bool) -> None:
        """A new sample; a counter that went down (stats reset) restarts the baseline."""
        if self._last is not None:
            deltas = [v - p for v, p in zip(values, self._last, strict=True)]
            if all(d >= 0 for d in deltas):
                window = "backup" if in_backup or self._last_in_backup else "outside"
                for i, delta in enumerate(deltas):
                    self.totals[window][i] += delta
                self.totals[window][-1] += max(0.0, now - self._last_at)
        self._last, self._last_at, self._last_in_backup = values, now, in_backup


class DatabaseCollector(Collector):
    """Samples the database at scrape time (one short connection per scrape)."""

    def __init__(
        self,
        postgres: Callable[[], PostgresConfig | None],
        in_backup: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._postgres = postgres
        self._in_backup = in_backup
        self._clock = clock
        self._stats = WindowedStats()
        self._lock = threading.Lock()
        self._up = 0.0

    def sample(self) -> None:
        cfg = self._postgres()
        if cfg is None:
            return
        in_backup = self._in_backup()
        try:
            with psycopg.connect(
                conninfo(cfg), autocommit=True, connect_timeout=CONNECT_TIMEOUT
            ) as conn:
                row = conn.execute(QUERY).fetchone()
        except psycopg.Error:
            self._up = 0.0
            return
        self._up = 1.0
        assert row is not None
        self._stats.add([float(v) for v in row], self._clock(), in_backup)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self.sample()
            up = GaugeMetricFamily(
                "ebk_pg_stats_up", "1 when the last sample of the database statistics succeeded"
            )
            up.add_metric([], self._up)
            yield up
            for i, (name, text) in enumerate(
                [*SERIES, ("ebk_pg_window_seconds", "Wall time attributed to each window")]
            ):
                family = CounterMetricFamily(name, f"{text}, by backup window", labels=["window"])
                for window in WINDOWS:
                    family.add_metric([window], self._stats.totals[window][i])
                yield family
