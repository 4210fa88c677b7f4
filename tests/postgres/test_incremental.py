"""Incremental physical backups on PostgreSQL 17 and 18 (slow tier), refused before 17.

One server per major with summarize_wal on (18's build has no zstd: the
incremental then runs ebk's own compression, and the parent's manifest is
uploaded again for the fallback BASE_BACKUP).  A full backup and two
incrementals with writes between them; the last incremental restores (chain
decrypted into a staging area, pg_combinebackup) to exactly the source's
rows.  Damage, forgery and deletion of a needed backup are refused on copies
of the same repository, so the chain is taken once per major.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import (
    PgBuild,
    PgCluster,
    give_to_postgres,
    init_cluster,
    make_postgres_dir,
    matrix_majors,
    pg_build,
    start_existing,
)
from tests.support.refusal import assert_refused

SETUP_SQL = """
CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric(14, 2));
INSERT INTO accounts SELECT g, 'owner ' || g, g * 3.5 FROM generate_series(1, 50000) g;
CREATE TABLE spaced (id int PRIMARY KEY, v text) TABLESPACE ts_app;
INSERT INTO spaced SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
"""
TABLES = ("accounts", "spaced", "later")


def _params() -> list[object]:
    return [
        pytest.param(major, id=f"pg{major}", marks=pytest.mark.slow)
        for major in (17, 18)
        if major in matrix_majors()
    ]


def snapshot(cluster: PgCluster) -> dict[str, str]:
    """Row checksums of every table (and the sequence-free row counts)."""
    return {
        table: cluster.psql(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '')"
            f" FROM {table} t",
            db="app",
        )
        for table in TABLES
    }


@dataclass
class Chain:
    build: PgBuild
    cluster: PgCluster
    env: EbkEnv
    work: Path
    full: dict[str, object]
    first: dict[str, object]
    second: dict[str, object]
    expected: dict[str, str]


@pytest.fixture(scope="module", params=_params())
def chain(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chain]:
    build = pg_build(int(request.param)).require()
    cluster = init_cluster(bin_dir=build.bin_dir)
    work = make_postgres_dir(f"ebk-incr-{build.major}-")
    try:
        cluster.psql("ALTER SYSTEM SET summarize_wal = on")
        cluster.psql("SELECT pg_reload_conf()")
        ts_dir = work / "ts"
        ts_dir.mkdir()
        give_to_postgres(ts_dir)
        cluster.psql(f"CREATE TABLESPACE ts_app LOCATION '{ts_dir}'")
        cluster.psql("CREATE DATABASE app")
        cluster.psql(SETUP_SQL + "CREATE TABLE later (id int PRIMARY KEY, v text);", db="app")
        env = make_env(tmp_path_factory.mktemp(f"incr{build.major}") / "ebk", cluster)
        # Nothing to build on yet: the first incremental is a full backup, and says why.
        taken = env.run("backup", "--type", "incremental", "--json")
        assert "no parent to build on; taking a full backup" in taken.stderr
        full = json.loads(taken.stdout)
        cluster.psql(
            "UPDATE accounts SET balance = balance + 1 WHERE id % 50 = 0;"
            "INSERT INTO later SELECT g, 'first ' || g FROM generate_series(1, 1000) g;",
            db="app",
        )
        first = json.loads(env.run("backup", "--type", "incremental", "--json").stdout)
        cluster.psql(
            "DELETE FROM accounts WHERE id % 97 = 0;"
            "UPDATE spaced SET v = 'changed' WHERE id < 100;"
            "INSERT INTO later SELECT g, 'second ' || g FROM generate_series(1001, 1500) g;",
            db="app",
        )
        second = json.loads(env.run("backup", "--type", "incremental", "--json").stdout)
        yield Chain(build, cluster, env, work, full, first, second, snapshot(cluster))
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


def _copy_env(chain: Chain, tmp_path: Path) -> EbkEnv:
    """The same keys and config over a copy of the repository (to damage it)."""
    repo = tmp_path / "repo"
    shutil.copytree(chain.env.repo_dir, repo)
    config = tmp_path / "ebk.toml"
    config.write_text(chain.env.config_path.read_text().replace(str(chain.env.repo_dir), str(repo)))
    return EbkEnv(tmp_path, config, repo, chain.env.keyfile)


def _ts_oid(chain: Chain) -> str:
    objects: list[dict[str, str]] = chain.second["objects"]  # type: ignore[assignment]
    return next(o["tablespace_oid"] for o in objects if o["role"] == "tablespace")


def test_the_chain_is_recorded_in_the_signed_manifests(chain: Chain) -> None:
    full, first, second = chain.full, chain.first, chain.second
    assert full["backup_type"] == "full" and "parent" not in full
    assert first["backup_type"] == "incremental"
    assert (first["parent"], first["chain_root"], first["chain_depth"]) == (
        full["backup_id"], full["backup_id"], 1,
    )  # fmt: skip
    assert (second["parent"], second["chain_root"], second["chain_depth"]) == (
        first["backup_id"], full["backup_id"], 2,
    )  # fmt: skip
    assert int(str(second["stored_size"])) < int(str(full["stored_size"]))
    listing = chain.env.run("list").stdout
    assert "incremental  " in listing and str(first["backup_id"]) in listing
    shown = chain.env.run("show", str(second["backup_id"])).stdout
    assert f"parent             {first['backup_id']}" in shown


def test_restore_of_the_last_incremental_matches_the_source(chain: Chain) -> None:
    target = chain.work / "restored"
    new_ts = chain.work / "restored-ts"
    oid = _ts_oid(chain)
    result = chain.env.run(
        "restore", str(chain.second["backup_id"]), "--to", str(target), "--owner", "postgres",
        "--tablespace-map", f"{oid}={new_ts}",
    )  # fmt: skip
    assert "combined with the 2 backup(s) it builds on" in result.stdout
    assert not list(chain.work.glob(".ebk-staging-*")), "the staging area was left behind"
    restored = start_existing(target, bin_dir=chain.build.bin_dir)
    try:
        assert snapshot(restored) == chain.expected
    finally:
        restored.stop()


def test_verify_restores_the_whole_chain_and_checks_it(chain: Chain, tmp_path: Path) -> None:
    """`ebk verify --level restore` of an incremental combines the chain, starts and checks it."""
    env = _copy_env(chain, tmp_path)
    scratch = make_postgres_dir("ebk-verify-incr-")
    try:
        with env.config_path.open("a") as config:
            config.write(f'\n[verify]\nscratch_dir = "{scratch}"\n')
        out = env.run("verify", str(chain.second["backup_id"]), "--level", "restore", "--json")
        (result,) = json.loads(out.stdout)
        checks = {c["name"]: c["outcome"] for c in result["checks"]}
        assert result["passed"], checks
        assert checks["restore"] == "pass" and checks["pg_verifybackup"] == "pass"
        assert checks["pg_amcheck"] == "pass" and checks["fingerprints"] == "pass"
        assert not [p for p in scratch.iterdir()], "verify left its scratch behind"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_deleting_a_backup_the_chain_needs_is_refused(chain: Chain) -> None:
    for needed in (chain.full, chain.first):
        out = assert_refused(
            chain.env.run("delete", str(needed["backup_id"]), "--yes", expect=None), 2
        )
        assert "needed by" in out and str(chain.second["backup_id"]) in out
    ids = [m["backup_id"] for m in json.loads(chain.env.run("list", "--json").stdout)]
    assert {chain.full["backup_id"], chain.first["backup_id"]} <= set(ids)


def test_a_corrupted_member_fails_naming_the_backup(chain: Chain, tmp_path: Path) -> None:
    env = _copy_env(chain, tmp_path)
    damaged = env.repo_dir / "backups" / str(chain.first["backup_id"]) / "base.tar.ebk"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    target = tmp_path / "restored"
    out = assert_refused(
        env.run(
            "restore", str(chain.second["backup_id"]), "--to", str(target),
            "--tablespace-map", f"{_ts_oid(chain)}={tmp_path / 'ts'}", expect=None,
        ),
        5,
    )  # fmt: skip
    assert f"backup {chain.first['backup_id']} (member 2 of 3 of the chain)" in out
    assert not target.exists() and not (tmp_path / "ts").exists()
    assert not list(tmp_path.glob(".ebk-staging-*")), "the staging area was left behind"


def test_a_forged_parent_link_is_refused(chain: Chain, tmp_path: Path) -> None:
    """Someone with write access to the bucket points the incremental elsewhere."""
    env = _copy_env(chain, tmp_path)
    path = env.repo_dir / "manifests" / f"{chain.second['backup_id']}.json"
    doc = json.loads(path.read_text())
    doc["parent"] = chain.full["backup_id"]
    doc["chain_depth"] = 1
    path.write_text(json.dumps(doc))
    out = assert_refused(
        env.run(
            "restore", str(chain.second["backup_id"]), "--to", str(tmp_path / "r"), expect=None
        ),
        5,
    )
    assert "signature" in out
    # Nor does a new incremental build on the forged one.
    listed = [m["backup_id"] for m in json.loads(env.run("list", "--json").stdout)]
    assert chain.second["backup_id"] not in listed


def test_summarize_wal_off_is_a_clear_error(chain: Chain) -> None:
    chain.cluster.psql("ALTER SYSTEM SET summarize_wal = off")
    chain.cluster.psql("SELECT pg_reload_conf()")
    try:
        out = assert_refused(chain.env.run("backup", "--type", "incremental", expect=None), 7)
        assert "summarize_wal is off" in out
        assert "ALTER SYSTEM SET summarize_wal = on" in out
    finally:
        chain.cluster.psql("ALTER SYSTEM SET summarize_wal = on")
        chain.cluster.psql("SELECT pg_reload_conf()")


def test_an_incremental_before_17_is_refused(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """Debian's 15 (the fast tier's server); 16 fails the same version check."""
    env = make_env(tmp_path / "ebk", pg_cluster)
    out = assert_refused(env.run("backup", "--type", "incremental", expect=None), 7)
    assert "PostgreSQL 15" in out and "need PostgreSQL 17 or newer" in out
    assert json.loads(env.run("list", "--json").stdout) == []


def test_a_damaged_parent_manifest_fails_naming_the_parent(chain: Chain, tmp_path: Path) -> None:
    env = _copy_env(chain, tmp_path)
    parent = str(chain.second["backup_id"])  # the newest physical backup
    damaged = env.repo_dir / "backups" / parent / "backup_manifest.ebk"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    before = json.loads(env.run("list", "--json").stdout)
    out = assert_refused(env.run("backup", "--type", "incremental", expect=None), 5)
    assert f"the parent backup {parent} is damaged" in out
    assert json.loads(env.run("list", "--json").stdout) == before
