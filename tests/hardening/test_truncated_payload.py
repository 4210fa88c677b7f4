"""Finding 13, stream half (issue 10), end to end on real PostgreSQL 15.

A *faulty writer* — it holds the data key, so this is not the bucket
attacker, who cannot do it — stores globals.sql and a dump whose
authenticated plaintext ends inside their zstd frame, and seals the manifest
to match.  Before the fix the truncated globals restored with exit 0 and a
truncated dump surfaced as pg_restore's failure (exit 7).  Now: exit 5
(integrity), no role created, no database left behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator

import pytest

from ebk.format.stream import COMPRESSION_ZSTD, DecryptingReader, EncryptingWriter
from ebk.keys.envelope import open_data_key
from ebk.repository.layout import manifest_name, object_name, stream_context
from ebk.runtime import Runtime
from ebk.storage.local import LocalStorage
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster, init_cluster


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PgCluster, EbkEnv]]:
    cluster = init_cluster()
    try:
        cluster.psql("CREATE DATABASE appdb")
        cluster.psql(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g",
            db="appdb",
        )
        cluster.psql("".join(f"CREATE ROLE planted_{i} NOLOGIN;" for i in range(40)))
        yield cluster, make_env(tmp_path_factory.mktemp("trunc") / "ebk", cluster)
    finally:
        cluster.destroy()


def _truncate_object(env: EbkEnv, backup_id: str, role: str) -> None:
    runtime = Runtime.load(env.config_path)
    repo = runtime.repository
    manifest = repo.read_manifest(backup_id)
    dek = open_data_key(repo.read_key_object(backup_id), runtime.key_providers, backup_id=backup_id)
    index, stored = next((i, o) for i, o in enumerate(manifest.objects) if o.role == role)
    name = object_name(backup_id, stored.name)
    ad = stream_context(backup_id, stored.name)
    storage = LocalStorage(env.repo_dir)  # the test writes as an attacker holding the DEK
    frame = DecryptingReader(io.BytesIO(storage.get_bytes(name)), dek, associated_data=ad)
    plaintext = frame.read()
    assert frame.header.compression == COMPRESSION_ZSTD
    cut = plaintext[: len(plaintext) * 2 // 3]
    out = io.BytesIO()
    writer = EncryptingWriter(
        out, dek, key_id=manifest.dek_id, associated_data=ad, compression=COMPRESSION_ZSTD
    )
    writer.write(cut)
    writer.close()
    storage.put_bytes(name, out.getvalue())
    manifest.objects[index] = dataclasses.replace(
        stored,
        plain_size=len(cut),
        stored_size=len(out.getvalue()),
        sha256=hashlib.sha256(out.getvalue()).hexdigest(),
    )
    manifest.seal(dek)
    manifest.sign(runtime.writer_key())  # a writer holding the DEK and the writer key
    storage.put_bytes(manifest_name(backup_id), manifest.to_json())


def _backup(env: EbkEnv) -> str:
    return str(json.loads(env.run("backup", "--type", "logical", "--json").stdout)["backup_id"])


def test_truncated_globals_are_an_integrity_error(source: tuple[PgCluster, EbkEnv]) -> None:
    cluster, env = source
    bid = _backup(env)
    _truncate_object(env, bid, "globals")
    cluster.psql("".join(f"DROP ROLE planted_{i};" for i in range(40)))
    result = env.run(
        "restore",
        bid,
        "--to-db",
        "copy_g",
        "--database",
        "appdb",
        "--create",
        "--with-globals",
        expect=5,
    )
    assert "incomplete frame" in result.stderr and "Traceback" not in result.output
    assert cluster.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'planted%'") == "0"
    assert cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'copy_g'") == "0"


def test_truncated_dump_is_an_integrity_error_not_a_postgres_error(
    source: tuple[PgCluster, EbkEnv],
) -> None:
    cluster, env = source
    bid = _backup(env)
    _truncate_object(env, bid, "dump")
    dump = next(
        o
        for o in json.loads(env.run("show", bid, "--json").stdout)["objects"]
        if o["role"] == "dump"
    )
    result = env.run(
        "restore",
        bid,
        "--to-db",
        "copy_d",
        "--database",
        dump["database"],
        "--create",
        expect=5,
    )
    assert "incomplete frame" in result.stderr and "Traceback" not in result.output
    assert cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'copy_d'") == "0"
