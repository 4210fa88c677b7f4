"""backup.max_rate and backup.compression_location reach the server (its own log of
replication commands says what BASE_BACKUP asked for), and the backups still restore."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ebk.config import BackupConfig, PostgresConfig, parse_max_rate
from ebk.errors import ConfigError
from ebk.placement import choose
from tests.support.ebkenv import make_env
from tests.support.postgres import PgCluster, start_existing

CONTENT_SQL = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM impact_t t"


def _log_replication_commands(cluster: PgCluster) -> None:
    cluster.psql("ALTER SYSTEM SET log_replication_commands = on")
    cluster.psql("SELECT pg_reload_conf()")


def _base_backup_commands(cluster: PgCluster) -> list[str]:
    return [
        line.split("received replication command: ", 1)[1]
        for line in cluster.log_file.read_text().splitlines()
        if "received replication command: BASE_BACKUP" in line
    ]


def _backup_and_restore(
    cluster: PgCluster, tmp_path: Path, postgres_dir: Path, backup_toml: str, name: str
) -> tuple[dict[str, object], float]:
    env = make_env(tmp_path / name, cluster, extra=f"\n[backup]\n{backup_toml}\n")
    began = time.monotonic()
    manifest = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    seconds = time.monotonic() - began
    target = postgres_dir / f"restored-{name}"
    env.run("restore", str(manifest["backup_id"]), "--to", str(target), "--owner", "postgres")
    restored = start_existing(target)
    try:
        assert restored.psql(CONTENT_SQL) == cluster.psql(CONTENT_SQL)
    finally:
        restored.stop()
    return manifest, seconds


@pytest.fixture
def impact_cluster(fresh_cluster: PgCluster) -> PgCluster:
    fresh_cluster.psql(
        "CREATE TABLE impact_t (id int primary key, v text);"
        "INSERT INTO impact_t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;"
    )
    _log_replication_commands(fresh_cluster)
    return fresh_cluster


def test_max_rate_throttles_the_server_and_the_backup_restores(
    impact_cluster: PgCluster, tmp_path: Path, postgres_dir: Path
) -> None:
    manifest, seconds = _backup_and_restore(
        impact_cluster,
        tmp_path,
        postgres_dir,
        'max_rate = "16M"\ncompression_location = "client"',
        "rate",
    )
    (command,) = _base_backup_commands(impact_cluster)
    assert "MAX_RATE 16384" in command
    # The server sleeps to hold 16 MiB/s over the bytes it sends (uncompressed here:
    # client-side compression), which puts a floor on the time.
    source = int(manifest["source_size"])  # type: ignore[call-overload]
    assert seconds >= 0.8 * source / (16 << 20), (seconds, source)


def test_server_and_client_compression_are_asked_for_and_restore(
    impact_cluster: PgCluster, tmp_path: Path, postgres_dir: Path
) -> None:
    _backup_and_restore(
        impact_cluster, tmp_path, postgres_dir, 'compression_location = "server"', "server"
    )
    _backup_and_restore(
        impact_cluster, tmp_path, postgres_dir, 'compression_location = "client"', "client"
    )
    server, client = _base_backup_commands(impact_cluster)
    assert "COMPRESSION 'zstd'" in server and "MAX_RATE" not in server
    assert "COMPRESSION" not in client


def test_a_bad_setting_is_a_config_error(pg_cluster: PgCluster, tmp_path: Path) -> None:
    env = make_env(tmp_path / "a", pg_cluster, extra='\n[backup]\nmax_rate = "fast"\n', init=False)
    out = env.run("backup", "--type", "physical", expect=2).output
    assert "backup.max_rate" in out
    env = make_env(
        tmp_path / "b", pg_cluster, extra='\n[backup]\ncompression_location = "gpu"\n', init=False
    )
    assert "compression_location" in env.run("backup", "--type", "physical", expect=2).output


@pytest.mark.parametrize(
    ("text", "kb"), [("", 0), ("0", 0), ("800k", 800), ("50M", 51200), ("4096", 4096)]
)
def test_max_rate_units(text: str, kb: int) -> None:
    assert parse_max_rate(text) == kb


@pytest.mark.parametrize("text", ["31k", "2000M", "fast", "-5", "1G"])
def test_max_rate_out_of_range(text: str) -> None:
    with pytest.raises(ConfigError, match=r"backup\.max_rate"):
        parse_max_rate(text)


def test_auto_placement_rule() -> None:
    auto = BackupConfig()
    for host in ("/var/run/postgresql", "127.0.0.1", "localhost", "::1"):
        assert choose(auto, PostgresConfig(host=host)).location == "server"
    remote = PostgresConfig(host="db.internal")
    assert choose(auto, remote).location == "client"
    assert choose(BackupConfig(compression_location="server"), remote).location == "server"
    assert choose(BackupConfig(compression_level=0), remote).location == "none"
