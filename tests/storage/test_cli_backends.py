"""The core's round trips through the CLI against each object-store emulator, and faults.

Real PostgreSQL 15, real emulator processes; ebk runs in-process through its
CLI with the repository URL in EBK_REPOSITORY__URL and the endpoint in the
config file, credentials in the SDKs' standard environment variables (fake
values the emulators accept).  Faults come from an HTTP proxy between ebk and
the emulator; the checks ask the emulator directly what it holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.backends import Backend
from tests.storage.faultproxy import FaultProxy, Match
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster

pytestmark = pytest.mark.slow

CONTENT_SQL = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"


def ebk_for(
    backend: Backend,
    root: Path,
    cluster: PgCluster,
    monkeypatch: pytest.MonkeyPatch,
    **storage: object,
) -> EbkEnv:
    monkeypatch.setenv("EBK_REPOSITORY__URL", backend.url)
    return make_env(root, cluster, extra=backend.storage_toml(**storage))


def part_upload(kind: str) -> Match:
    """Requests that carry one part of a streamed object."""
    if kind == "s3":
        return lambda method, target: method == "PUT" and "partNumber=" in target
    if kind == "gcs":
        return lambda method, target: method == "PUT" and "upload_id=" in target
    return lambda method, target: (
        method == "PUT" and "comp=block" in target and "comp=blocklist" not in target
    )


@pytest.fixture
def proxy(cloud_backend: Backend) -> Iterator[FaultProxy]:
    port = int(cloud_backend.endpoint.rsplit(":", 1)[1])
    fault = FaultProxy(port)
    fault.start()
    yield fault
    fault.stop()


def test_physical_roundtrip(
    cloud_backend: Backend,
    pg_cluster: PgCluster,
    postgres_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = f"phys_{cloud_backend.kind}"
    pg_cluster.psql(
        f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int primary key, "
        f"v text); INSERT INTO {table} SELECT g, md5(g::text) "
        "FROM generate_series(1, 20000) g"
    )
    expected = pg_cluster.psql(CONTENT_SQL.format(table=table))
    env = ebk_for(cloud_backend, tmp_path / "ebk", pg_cluster, monkeypatch)
    manifest = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    assert sorted(o["role"] for o in manifest["objects"]) == ["backup_manifest", "base"]
    prefix = f"backups/{manifest['backup_id']}/"
    assert cloud_backend.raw_names("backups/") == sorted(
        [f"{prefix}key.json"] + [f"{prefix}{o['name']}" for o in manifest["objects"]]
    )
    assert cloud_backend.raw_names("manifests/") == [f"manifests/{manifest['backup_id']}.json"]
    assert cloud_backend.raw_incomplete() == []
    listed = json.loads(env.run("list", "--json").stdout)
    assert [b["backup_id"] for b in listed] == [manifest["backup_id"]]

    target = postgres_dir / "restored"
    env.run("restore", "latest", "--to", str(target), "--owner", "postgres")
    from tests.support.postgres import start_existing

    restored = start_existing(target)
    try:
        assert restored.psql(CONTENT_SQL.format(table=table)) == expected
    finally:
        restored.stop()


def test_logical_roundtrip(
    cloud_backend: Backend, pg_cluster: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = f"src_{cloud_backend.kind}", f"dst_{cloud_backend.kind}"
    pg_cluster.psql(f"DROP DATABASE IF EXISTS {source}")
    pg_cluster.psql(f"DROP DATABASE IF EXISTS {target}")
    pg_cluster.psql(f"CREATE DATABASE {source}")
    pg_cluster.psql(
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, "
        "repeat(md5(g::text), 3) FROM generate_series(1, 30000) g",
        db=source,
    )
    expected = pg_cluster.psql(CONTENT_SQL.format(table="t"), db=source)
    env = ebk_for(cloud_backend, tmp_path / "ebk", pg_cluster, monkeypatch)
    manifest = json.loads(
        env.run("backup", "--type", "logical", "--database", source, "--json").stdout
    )
    assert manifest["databases"] == [source]
    env.run("restore", manifest["backup_id"], "--to-db", target, "--create")
    assert pg_cluster.psql(CONTENT_SQL.format(table="t"), db=target) == expected
    env.run("delete", manifest["backup_id"], "--yes")
    assert cloud_backend.raw_names("backups/") == []
    assert json.loads(env.run("list", "--json").stdout) == []


def test_transient_faults_mid_upload_are_retried(
    cloud_backend: Backend,
    proxy: FaultProxy,
    pg_cluster: PgCluster,
    postgres_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection cut halfway through a part, then a 503: the backup still completes."""
    via = cloud_backend.via(proxy.endpoint)
    via.apply_env(monkeypatch)
    env = ebk_for(via, tmp_path / "ebk", pg_cluster, monkeypatch)
    # The first chunk of a GCS session is let through: the emulator misreports an
    # empty session's offset (Range: bytes=0-0), which real GCS does not.
    proxy.fail(part_upload(cloud_backend.kind), "drop", times=1, skip=1)
    proxy.fail(part_upload(cloud_backend.kind), 503, times=1, skip=2)
    # compression off: base.tar is ~40 MB, several 5 MiB parts
    env_cfg = env.config_path.read_text() + "[backup]\ncompression_level = 0\n"
    env.config_path.write_text(env_cfg)
    manifest = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    outcomes = [o for _m, _t, o in proxy.log]
    assert "dropped" in outcomes and "503" in outcomes
    assert cloud_backend.raw_incomplete() == []
    env.run(
        "restore",
        manifest["backup_id"],
        "--to",
        str(postgres_dir / "restored"),
        "--owner",
        "postgres",
    )  # verifies every object's SHA-256 and pg_verifybackup
    assert (postgres_dir / "restored" / "PG_VERSION").read_text().strip() == "15"


def test_permanent_failure_mid_upload_leaves_nothing(
    cloud_backend: Backend,
    proxy: FaultProxy,
    pg_cluster: PgCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store keeps failing parts: the backup fails cleanly, aborted, nothing listed."""
    via = cloud_backend.via(proxy.endpoint)
    via.apply_env(monkeypatch)
    env = ebk_for(via, tmp_path / "ebk", pg_cluster, monkeypatch, max_retries=2)
    env.config_path.write_text(env.config_path.read_text() + "[backup]\ncompression_level = 0\n")
    proxy.fail(part_upload(cloud_backend.kind), 500, skip=2)
    result = env.run("backup", "--type", "physical", expect=4)
    assert "gave up after 3 attempts" in result.output
    proxy.clear()
    assert json.loads(env.run("list", "--json").stdout) == []
    assert cloud_backend.raw_names("backups/") == []  # key object removed too
    assert cloud_backend.raw_incomplete() == []  # multipart upload / blocks aborted


def test_lost_store_leaves_orphans_that_repo_check_cleans(
    cloud_backend: Backend,
    proxy: FaultProxy,
    pg_cluster: PgCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store vanishes mid-upload (even abort fails): the next run finds and cleans up."""
    via = cloud_backend.via(proxy.endpoint)
    via.apply_env(monkeypatch)
    env = ebk_for(via, tmp_path / "ebk", pg_cluster, monkeypatch, max_retries=1)
    env.config_path.write_text(env.config_path.read_text() + "[backup]\ncompression_level = 0\n")
    part = part_upload(cloud_backend.kind)
    state = {"parts": 0}

    def everything_after_two_parts(method: str, target: str) -> bool:
        if part(method, target):
            state["parts"] += 1
        return state["parts"] > 2

    proxy.fail(everything_after_two_parts, "drop")
    env.run("backup", "--type", "physical", expect=4)
    proxy.clear()

    names = cloud_backend.raw_names("backups/")
    assert len(names) == 1 and names[0].endswith("/key.json")  # the cleanup could not run
    orphans = cloud_backend.raw_incomplete()
    assert len(orphans) == (0 if cloud_backend.kind == "gcs" else 1)

    direct = ebk_for(cloud_backend, tmp_path / "ebk2", pg_cluster, monkeypatch)
    report = json.loads(direct.run("repo", "check", "--json").stdout)
    assert len(report["incomplete_backups"]) == 1
    assert len(report["orphaned_uploads"]) == len(orphans)
    kept = json.loads(direct.run("repo", "check", "--clean", "--json").stdout)
    assert not any(e["removed"] for e in kept["incomplete_backups"] + kept["orphaned_uploads"])
    assert cloud_backend.raw_names("backups/") == names  # younger than 24 h: may be running, kept
    text = direct.run("repo", "check").stdout
    assert "may be running" in text
    cleaned = json.loads(
        direct.run("repo", "check", "--clean", "--older-than", "0s", "--json").stdout
    )
    assert all(e["removed"] for e in cleaned["incomplete_backups"] + cleaned["orphaned_uploads"])
    assert cloud_backend.raw_names("backups/") == []
    assert cloud_backend.raw_incomplete() == []
    assert "no incomplete backups" in direct.run("repo", "check").stdout
