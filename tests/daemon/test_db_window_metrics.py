"""The database's commit rate and I/O timings, split into inside and outside backup
windows, from a real PostgreSQL's pg_stat_database."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ebk.config import PostgresConfig
from ebk.daemon.dbstats import DatabaseCollector, WindowedStats
from ebk.daemon.service import Daemon
from tests.support.postgres import PgCluster


def _values(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found[(sample.name, sample.labels.get("window", ""))] = sample.value
    return found


def _commits(cluster: PgCluster, n: int) -> None:
    cluster.psql("CREATE TABLE IF NOT EXISTS window_t (v int)")
    for _ in range(n):
        cluster.psql("INSERT INTO window_t VALUES (1)")


def test_commits_land_in_the_window_they_happened_in(pg_cluster: PgCluster) -> None:
    cfg = PostgresConfig(host=pg_cluster.host, port=pg_cluster.port, user="postgres")
    state = {"backup": False, "now": 100.0}
    registry = CollectorRegistry()
    registry.register(
        DatabaseCollector(lambda: cfg, lambda: state["backup"], clock=lambda: state["now"])
    )
    assert _values(registry)[("ebk_pg_stats_up", "")] == 1.0  # the baseline sample
    _commits(pg_cluster, 5)
    state["now"] = 110.0
    outside = _values(registry)
    assert outside[("ebk_pg_xact_commit_total", "outside")] >= 5
    assert outside[("ebk_pg_xact_commit_total", "backup")] == 0
    assert outside[("ebk_pg_window_seconds_total", "outside")] == 10.0

    state["backup"], state["now"] = True, 130.0
    _commits(pg_cluster, 7)
    inside = _values(registry)
    assert inside[("ebk_pg_xact_commit_total", "backup")] >= 7
    assert inside[("ebk_pg_window_seconds_total", "backup")] == 20.0
    # The scrape after a backup ended still belongs to the window (it ran during it).
    state["backup"], state["now"] = False, 140.0
    assert _values(registry)[("ebk_pg_window_seconds_total", "backup")] == 30.0


def test_an_unreachable_database_is_reported_down_not_raised() -> None:
    cfg = PostgresConfig(host="127.0.0.1", port=1, user="postgres")
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(lambda: cfg, lambda: False))
    assert _values(registry)[("ebk_pg_stats_up", "")] == 0.0


def test_a_statistics_reset_does_not_make_negative_rates() -> None:
    stats = WindowedStats()
    stats.add([100, 0, 0, 0, 0], 0.0, False)
    stats.add([5, 0, 0, 0, 0], 10.0, False)  # pg_stat_reset()
    stats.add([9, 0, 0, 0, 0], 20.0, False)
    assert stats.totals["outside"][0] == 4 and stats.totals["outside"][-1] == 10.0


def test_the_daemon_exports_the_series() -> None:
    text = Daemon(None).metrics.render().decode()
    assert "ebk_pg_xact_commit_total" in text and "ebk_pg_window_seconds_total" in text
