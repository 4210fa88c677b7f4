"""Crypto-shredding: `ebk delete` destroys the key object first; no copy of the data opens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.support.ebkenv import make_env
from tests.support.postgres import PgCluster


def test_deleted_backup_stays_unrecoverable_from_a_bucket_copy(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    env = make_env(tmp_path / "ebk", pg_cluster)
    pg_cluster.psql("DROP DATABASE IF EXISTS shred_src")
    pg_cluster.psql("CREATE DATABASE shred_src")
    pg_cluster.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g", db="shred_src")
    try:
        backup_id = json.loads(
            env.run("backup", "--type", "logical", "--database", "shred_src", "--json").stdout
        )["backup_id"]
        keep = json.loads(
            env.run("backup", "--type", "logical", "--database", "shred_src", "--json").stdout
        )["backup_id"]
        # a copy of the bucket as versioning or a replica keeps it: data and manifest,
        # but not the key object (destroyed first, it has no older copy to come back from)
        copy = tmp_path / "bucket-copy"
        data_dir = env.repo_dir / "backups" / backup_id
        shutil.copytree(data_dir, copy / "data", ignore=shutil.ignore_patterns("key.json"))
        manifest = env.repo_dir / "manifests" / f"{backup_id}.json"
        shutil.copy2(manifest, copy / "manifest.json")

        env.run("delete", backup_id, "--yes")
        assert not data_dir.exists() and not manifest.exists()
        assert not (env.repo_dir / "shredded" / backup_id).exists()

        shutil.copytree(copy / "data", data_dir)
        shutil.copy2(copy / "manifest.json", manifest)
        # what the crash of a delete between key and manifest leaves looks the same
        (env.repo_dir / "shredded").mkdir(exist_ok=True)
        (env.repo_dir / "shredded" / backup_id).write_text("{}")

        listed = env.run("list", "--json")
        assert [b["backup_id"] for b in json.loads(listed.stdout)] == [keep]
        assert "shredded" in listed.stderr and backup_id in listed.stderr
        shown = json.loads(env.run("show", backup_id, "--json").stdout)
        assert shown["state"] == "shredded"
        failed = env.run("restore", backup_id, "--to-db", "shred_copy", "--create", expect=9)
        assert f"backup {backup_id} is shredded" in failed.output
        assert "corrupt" not in failed.output.lower()

        report = json.loads(env.run("repo", "check", "--json").stdout)
        assert report["shredded_backups"] == [{"backup_id": backup_id, "removed": False}]
        env.run("repo", "check", "--clean")
        assert not data_dir.exists() and not manifest.exists()
        assert json.loads(env.run("repo", "check", "--json").stdout)["shredded_backups"] == []

        # a tombstone next to a key object that still exists changes nothing
        (env.repo_dir / "shredded").mkdir(exist_ok=True)
        (env.repo_dir / "shredded" / keep).write_text("{}")
        assert [b["backup_id"] for b in json.loads(env.run("list", "--json").stdout)] == [keep]
        env.run("restore", keep, "--to-db", "shred_copy", "--database", "shred_src", "--create")
        assert pg_cluster.psql("SELECT count(*) FROM t", db="shred_copy") == "100"
    finally:
        pg_cluster.psql("DROP DATABASE IF EXISTS shred_src")
        pg_cluster.psql("DROP DATABASE IF EXISTS shred_copy")
