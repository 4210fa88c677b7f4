"""Physical backup and restore against a real PostgreSQL 15, data compared by content."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.ebkenv import make_env
from tests.support.postgres import PgCluster, give_to_postgres, start_existing

CONTENT_SQL = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"


def test_physical_roundtrip_with_tablespace(
    fresh_cluster: PgCluster, postgres_dir: Path, tmp_path: Path
) -> None:
    ts_dir = postgres_dir / "ts1"
    ts_dir.mkdir()
    give_to_postgres(ts_dir)
    fresh_cluster.psql(f"CREATE TABLESPACE ts1 LOCATION '{ts_dir}'")
    fresh_cluster.psql(
        "CREATE TABLE main_t (id int primary key, v text);"
        "INSERT INTO main_t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;"
        "CREATE TABLE ts_t (id int primary key, v text) TABLESPACE ts1;"
        "INSERT INTO ts_t SELECT g, repeat('x', g % 50) FROM generate_series(1, 5000) g;"
    )
    expected = {t: fresh_cluster.psql(CONTENT_SQL.format(table=t)) for t in ("main_t", "ts_t")}
    env = make_env(tmp_path / "ebk", fresh_cluster)
    out = env.run("backup", "--type", "physical", "--json")
    manifest = json.loads(out.stdout)
    roles = sorted(o["role"] for o in manifest["objects"])
    assert roles == ["backup_manifest", "base", "tablespace"]
    assert manifest["start_lsn"] and manifest["stop_lsn"]

    target = postgres_dir / "restored"
    new_ts = postgres_dir / "restored_ts"
    oid = next(o["tablespace_oid"] for o in manifest["objects"] if o["role"] == "tablespace")
    env.run(
        "restore",
        manifest["backup_id"],
        "--to",
        str(target),
        "--owner",
        "postgres",
        "--tablespace-map",
        f"{oid}={new_ts}",
    )
    assert (target / "pg_tblspc" / oid).resolve() == new_ts
    restored = start_existing(target)
    try:
        for table, digest in expected.items():
            assert restored.psql(CONTENT_SQL.format(table=table)) == digest
    finally:
        restored.stop()
