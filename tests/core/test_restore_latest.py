"""`latest` picks the newest backup of the kind the restore target needs."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.ebkenv import make_env
from tests.support.postgres import PgCluster


def test_latest_means_newest_of_the_needed_kind(
    pg_cluster: PgCluster, postgres_dir: Path, tmp_path: Path
) -> None:
    env = make_env(tmp_path / "ebk", pg_cluster)
    physical = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    logical = json.loads(env.run("backup", "--type", "logical", "--json").stdout)
    assert logical["start_time"] >= physical["start_time"]

    result = env.run("restore", "latest", "--to", str(postgres_dir / "restored"), "--owner",
                     "postgres")
    assert physical["backup_id"] in result.stdout
    assert (postgres_dir / "restored" / "global" / "pg_control").exists()


def test_latest_of_a_missing_kind_says_which_kind(pg_cluster: PgCluster, tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", pg_cluster)
    env.run("backup", "--type", "logical")
    result = env.run("restore", "latest", "--to", str(tmp_path / "target"), expect=9)
    assert "no complete physical backup" in result.output
    assert "ebk backup --type physical" in result.output
