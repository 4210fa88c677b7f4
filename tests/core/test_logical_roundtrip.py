"""Logical backup and restore against real PostgreSQL 15, compared by content.

Several databases, several column types (bytea with every byte value, jsonb,
arrays, numerics, timestamps, NULLs, non-ASCII text, TOASTed large text), a
role that owns tables (globals).  Restores go into the same cluster under new
names, and into a second, empty cluster with the globals.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster, init_cluster

SHOP_SQL = """
CREATE ROLE app_owner NOLOGIN;
CREATE TABLE items (
    id int PRIMARY KEY, name text, price numeric(12, 2), tags text[], attrs jsonb,
    created timestamptz, photo bytea, body text);
INSERT INTO items
SELECT g, 'item ' || g || ' ünïcödé ✓ €', g * 1.25, ARRAY['t' || g % 7, 'x'],
       jsonb_build_object('n', g, 'nested', jsonb_build_object('ok', g % 2 = 0),
                          'list', jsonb_build_array(g, 'a', null)),
       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour',
       CASE WHEN g % 10 = 0 THEN NULL ELSE decode(md5(g::text) || md5((g+1)::text), 'hex') END,
       CASE WHEN g % 500 = 0 THEN repeat(md5(g::text), 6000) ELSE md5(g::text) END
FROM generate_series(1, 3000) g;
UPDATE items SET photo = (SELECT string_agg(set_byte('\\x00'::bytea, 0, b), ''::bytea)
                          FROM generate_series(0, 255) b) WHERE id = 1;
CREATE TABLE orders (id serial PRIMARY KEY, item_id int REFERENCES items, qty int NOT NULL);
INSERT INTO orders (item_id, qty) SELECT 1 + g % 3000, g FROM generate_series(1, 5000) g;
CREATE INDEX orders_item ON orders (item_id);
ALTER TABLE items OWNER TO app_owner;
ALTER TABLE orders OWNER TO app_owner;
"""

LOGS_SQL = """
CREATE TABLE events (id bigint PRIMARY KEY, payload jsonb, at timestamptz);
INSERT INTO events SELECT g, jsonb_build_object('k', md5(g::text)), now()
FROM generate_series(1, 5000) g;
"""

TABLES = {"shop": ["items", "orders"], "logs": ["events"]}


def digest(cluster: PgCluster, db: str, table: str) -> str:
    return cluster.psql(
        f"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t", db=db
    )


def snapshot(cluster: PgCluster, mapping: dict[str, str]) -> dict[str, str]:
    """Digest of every table, keyed by its source database; ``mapping`` renames dbs."""
    out = {
        f"{db}.{t}": digest(cluster, mapping.get(db, db), t)
        for db, tables in TABLES.items()
        if db in mapping
        for t in tables
    }
    seq_db = mapping.get("shop")
    if seq_db:
        out["shop.orders_id_seq"] = cluster.psql("SELECT last_value FROM orders_id_seq", db=seq_db)
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PgCluster, EbkEnv]]:
    cluster = init_cluster()
    try:
        cluster.psql("CREATE DATABASE shop")
        cluster.psql("CREATE DATABASE logs")
        cluster.psql(SHOP_SQL, db="shop")
        cluster.psql(LOGS_SQL, db="logs")
        env = make_env(tmp_path_factory.mktemp("logical") / "ebk", cluster)
        yield cluster, env
    finally:
        cluster.destroy()


def test_data_is_what_the_test_claims(source: tuple[PgCluster, EbkEnv]) -> None:
    """Guard the fixture: TOASTed text, every byte value, NULLs are really there."""
    cluster, _ = source
    assert cluster.psql("SELECT max(length(body)) FROM items", db="shop") == "192000"
    assert cluster.psql("SELECT length(photo) FROM items WHERE id = 1", db="shop") == "256"
    assert cluster.psql("SELECT count(*) FROM items WHERE photo IS NULL", db="shop") == "300"
    assert (
        int(
            cluster.psql(
                "SELECT pg_total_relation_size(reltoastrelid) FROM pg_class "
                "WHERE relname = 'items'",
                db="shop",
            )
        )
        > 8192
    )


def test_selected_databases_round_trip(source: tuple[PgCluster, EbkEnv]) -> None:
    cluster, env = source
    expected = snapshot(cluster, {"shop": "shop", "logs": "logs"})
    manifest = json.loads(
        env.run(
            "backup", "--type", "logical", "--database", "shop", "--database", "logs", "--json"
        ).stdout
    )
    assert manifest["databases"] == ["shop", "logs"]
    assert sorted(o["database"] for o in manifest["objects"] if o["role"] == "dump") == [
        "logs",
        "shop",
    ]
    assert not [o for o in manifest["objects"] if o["role"] == "globals"]
    bid = manifest["backup_id"]

    result = env.run("restore", bid, "--to-db", "shop_copy", "--create", expect=10)
    assert "holds 2 databases" in result.stderr and "--database" in result.stderr

    env.run("restore", bid, "--to-db", "shop_copy", "--database", "shop", "--create")
    env.run("restore", bid, "--to-db", "logs_copy", "--database", "logs", "--create")
    assert snapshot(cluster, {"shop": "shop_copy", "logs": "logs_copy"}) == expected

    again = env.run(
        "restore", bid, "--to-db", "shop_copy", "--database", "shop", "--create", expect=10
    )
    assert "already exists" in again.stderr
    assert snapshot(cluster, {"shop": "shop_copy"})["shop.items"] == expected["shop.items"]


def test_single_database_restores_into_existing_empty_database(
    source: tuple[PgCluster, EbkEnv],
) -> None:
    cluster, env = source
    bid = json.loads(env.run("backup", "--type", "logical", "--database", "logs", "--json").stdout)[
        "backup_id"
    ]
    cluster.psql("CREATE DATABASE logs_into")
    env.run("restore", bid, "--to-db", "logs_into")
    assert digest(cluster, "logs_into", "events") == digest(cluster, "logs", "events")


def test_all_databases_with_globals_into_an_empty_cluster(
    source: tuple[PgCluster, EbkEnv], tmp_path: Path
) -> None:
    cluster, env = source
    expected = snapshot(cluster, {"shop": "shop", "logs": "logs"})
    manifest = json.loads(env.run("backup", "--type", "logical", "--json").stdout)
    dbs = manifest["databases"]
    assert {"postgres", "shop", "logs"} <= set(dbs)
    assert [o["role"] for o in manifest["objects"]].count("globals") == 1

    other = init_cluster()
    try:
        config = tmp_path / "other.toml"
        config.write_text(
            f'[repository]\nurl = "file://{env.repo_dir}"\n\n[keys]\nprovider = "keyfile"\n'
            f'keyfile = "{env.keyfile}"\n\n[log]\nformat = "json"\n\n' + other.config_section()
        )
        there = EbkEnv(tmp_path, config, env.repo_dir, env.keyfile)
        bid = manifest["backup_id"]
        there.run(
            "restore", bid, "--to-db", "shop", "--database", "shop", "--create", "--with-globals"
        )
        there.run("restore", bid, "--to-db", "logs", "--database", "logs", "--create")
        assert snapshot(other, {"shop": "shop", "logs": "logs"}) == expected
        assert (
            other.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'items'", db="shop")
            == "app_owner"
        )
    finally:
        other.destroy()
