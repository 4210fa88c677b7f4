"""`latest` picks the newest backup of the kind the restore target needs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.ebkenv import make_env
from tests.support.postgres import PgCluster, start_existing


def test_latest_means_newest_of_the_needed_kind(
    pg_cluster: PgCluster, postgres_dir: Path, tmp_path: Path
) -> None:
    env = make_env(tmp_path / "ebk", pg_cluster)
    physical = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    logical = json.loads(env.run("backup", "--type", "logical", "--json").stdout)
    assert logical["start_time"] >= physical["start_time"]

    result = env.run(
        "restore", "latest", "--to", str(postgres_dir / "restored"), "--owner", "postgres"
    )
    assert physical["backup_id"] in result.stdout
    assert (postgres_dir / "restored" / "global" / "pg_control").exists()


def test_latest_of_a_missing_kind_says_which_kind(pg_cluster: PgCluster, tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", pg_cluster)
    env.run("backup", "--type", "logical")
    result = env.run("restore", "latest", "--to", str(tmp_path / "target"), expect=9)
    assert "no complete physical backup" in result.output
    assert "ebk backup --type physical" in result.output


def test_latest_is_the_newest_of_several_backups_of_each_kind(
    pg_cluster: PgCluster, postgres_dir: Path, tmp_path: Path
) -> None:
    """P1 L1 P2 L2 (P3): each backup holds its own marker row, so what comes back proves
    which backup `latest` restored; the newest backup overall is always of the other kind.

    The backups are spaced by > 1 s: backup ids of the same second sort by their random
    suffix today, so two backups within one second could list in either order.
    """
    env = make_env(tmp_path / "ebk", pg_cluster)
    pg_cluster.psql("DROP DATABASE IF EXISTS latest_src")
    pg_cluster.psql("CREATE DATABASE latest_src")
    pg_cluster.psql("CREATE TABLE marker (backup text)", db="latest_src")
    taken: dict[str, str] = {}

    def backup(label: str, kind: str) -> None:
        if taken:
            time.sleep(1.1)
        pg_cluster.psql(f"TRUNCATE marker; INSERT INTO marker VALUES ('{label}')", db="latest_src")
        args = ["backup", "--type", kind, "--json"]
        if kind == "logical":
            args += ["--database", "latest_src"]
        taken[label] = json.loads(env.run(*args).stdout)["backup_id"]

    for label, kind in (
        ("P1", "physical"),
        ("L1", "logical"),
        ("P2", "physical"),
        ("L2", "logical"),
    ):
        backup(label, kind)
    listed = [b["backup_id"] for b in json.loads(env.run("list", "--json").stdout)]
    assert listed == [taken[label] for label in ("P1", "L1", "P2", "L2")]

    target = postgres_dir / "restored"
    result = env.run("restore", "latest", "--to", str(target), "--owner", "postgres")
    assert taken["P2"] in result.stdout and taken["P1"] not in result.stdout
    restored = start_existing(target)
    try:
        assert restored.psql("SELECT backup FROM marker", db="latest_src") == "P2"
    finally:
        restored.stop()

    backup("P3", "physical")  # now the newest backup overall is physical
    env.run("restore", "latest", "--to-db", "latest_copy", "--database", "latest_src", "--create")
    try:
        assert pg_cluster.psql("SELECT backup FROM marker", db="latest_copy") == "L2"
    finally:
        pg_cluster.psql("DROP DATABASE IF EXISTS latest_copy")
        pg_cluster.psql("DROP DATABASE IF EXISTS latest_src")
