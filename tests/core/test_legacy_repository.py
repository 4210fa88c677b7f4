"""Backups written by ebk 0.1 (manifest v1, layout 1) still list, restore and migrate.

tests/data/repo-v1 was written by ebk 0.1 itself (see its README) and is never
regenerated: it is the compatibility promise in bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.ebkenv import EbkEnv
from tests.support.postgres import PgCluster, start_existing

FROZEN = Path(__file__).resolve().parents[1] / "data" / "repo-v1"
LOGICAL, PHYSICAL = "20261129T230950Z-1bca7c", "20261129T230950Z-5f408f"


@pytest.fixture
def legacy_env(tmp_path: Path, pg_cluster: PgCluster) -> EbkEnv:
    root = tmp_path / "ebk"
    shutil.copytree(FROZEN / "repo", root / "repo")
    shutil.copy(FROZEN / "kek.json", root / "kek.json")
    (root / "kek.json").chmod(0o600)
    config = root / "ebk.toml"
    config.write_text(
        f'[repository]\nurl = "file://{root}/repo"\n\n[keys]\nprovider = "keyfile"\n'
        f'keyfile = "{root}/kek.json"\n\n[log]\nformat = "json"\n\n' + pg_cluster.config_section()
    )
    return EbkEnv(root, config, root / "repo", root / "kek.json")


def _rows(cluster: PgCluster, db: str) -> str:
    return cluster.psql("SELECT count(*) || ':' || max(note) FROM frozen", db=db)


def test_a_v1_repository_restores_and_is_re_signed(
    legacy_env: EbkEnv, pg_cluster: PgCluster, postgres_dir: Path
) -> None:
    # 0.1 manifests carry no writer signature: never listed, counted or chosen ...
    listed = legacy_env.run("list", "--json")
    assert json.loads(listed.stdout) == []
    assert "2 backup(s) written by ebk 0.1" in listed.stderr and "ebk repo migrate" in listed.stderr
    legacy_env.run("restore", "latest", "--to-db", "never", expect=9)
    # ... but they restore when named by id, authenticated by their MAC under the KEK.
    expected = "100:written by ebk 0.1, row 99"
    legacy_env.run("restore", LOGICAL, "--to-db", "legacy_v1", "--create")
    assert _rows(pg_cluster, "legacy_v1") == expected

    out = legacy_env.run("repo", "migrate").stdout
    assert "re-signed 2 backup(s)" in out
    assert not list((legacy_env.repo_dir / "backups").glob("*/manifest.json"))
    assert sorted(p.name for p in (legacy_env.repo_dir / "manifests").iterdir()) == [
        f"{LOGICAL}.json",
        f"{PHYSICAL}.json",
    ]
    marker = json.loads((legacy_env.repo_dir / "ebk-repository.json").read_text())
    assert marker["layout"] == 2 and marker["repository_id"].startswith("repo-")
    assert (legacy_env.repo_dir / "keys" / "writer.json").exists()
    listed = legacy_env.run("list", "--json")
    shown = {b["backup_id"]: b for b in json.loads(listed.stdout)}
    assert sorted(shown) == [LOGICAL, PHYSICAL]
    assert {b["manifest_version"] for b in shown.values()} == {2}
    assert "0.1" not in listed.stderr
    assert "re-signed 0 backup(s)" in legacy_env.run("repo", "migrate").stdout  # idempotent

    # The re-signed physical backup restores and starts: its objects were never touched.
    target = postgres_dir / "restored-v1"
    legacy_env.run("restore", PHYSICAL, "--to", str(target), "--owner", "postgres")
    restored = start_existing(target)
    try:
        assert _rows(restored, "app") == expected
    finally:
        restored.stop()

    # New backups go next to the old ones; `latest` is the newest of each kind.
    new = json.loads(
        legacy_env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
    )
    assert new["manifest_version"] == 2
    ids = [b["backup_id"] for b in json.loads(legacy_env.run("list", "--json").stdout)]
    assert ids[-1] == new["backup_id"] and len(ids) == 3
    assert json.loads(legacy_env.run("show", "latest", "--json").stdout)["backup_id"] == ids[-1]


def test_backup_into_a_0_1_repository_asks_for_migration(legacy_env: EbkEnv) -> None:
    result = legacy_env.run("backup", "--type", "logical", "--database", "postgres", expect=4)
    assert "ebk repo migrate" in result.stderr
    assert not (legacy_env.repo_dir / "manifests").exists()


def test_an_edited_v1_manifest_is_refused(legacy_env: EbkEnv, tmp_path: Path) -> None:
    manifest = legacy_env.repo_dir / "backups" / LOGICAL / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["databases"] = ["other"]
    manifest.write_text(json.dumps(doc))
    result = legacy_env.run("restore", LOGICAL, "--to-db", "never", "--create", expect=5)
    assert "failed authentication" in result.stderr
    # ... and `repo migrate` refuses to re-sign it.
    result = legacy_env.run("repo", "migrate", expect=5)
    assert "failed authentication" in result.stderr
