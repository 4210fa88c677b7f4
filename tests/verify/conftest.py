"""A source cluster with data, an ebk config around it and a scratch dir the server can use."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster, init_cluster, make_postgres_dir

SHOP_SQL = """
CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(12, 2), at timestamptz);
INSERT INTO items SELECT g, 'item ' || g, g * 1.25, '2024-01-01'::timestamptz + g * interval '1h'
FROM generate_series(1, 2000) g;
CREATE TABLE orders (id serial PRIMARY KEY, item_id int REFERENCES items, qty int NOT NULL);
INSERT INTO orders (item_id, qty) SELECT 1 + g % 2000, g FROM generate_series(1, 3000) g;
CREATE INDEX orders_item ON orders (item_id);
CREATE TABLE notes (body text);
INSERT INTO notes SELECT md5(g::text) FROM generate_series(1, 50) g;
"""


@dataclass
class VerifySource:
    cluster: PgCluster
    env: EbkEnv
    scratch: Path


def make_source(root: Path) -> VerifySource:
    cluster = init_cluster()
    cluster.psql("CREATE DATABASE shop")
    cluster.psql(SHOP_SQL, db="shop")
    scratch = make_postgres_dir("ebk-verify-scratch-")
    env = make_env(root, cluster, extra=f'\n[verify]\nscratch_dir = "{scratch}"\n')
    return VerifySource(cluster, env, scratch)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VerifySource]:
    src = make_source(tmp_path_factory.mktemp("verify") / "ebk")
    try:
        yield src
    finally:
        src.cluster.destroy()
        import shutil

        shutil.rmtree(src.scratch, ignore_errors=True)
