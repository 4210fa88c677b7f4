"""THE MARKER TEST: no database content reaches the repository in plaintext.

Distinctive markers go into an ordinary heap row, a TOASTed value stored
out of line and uncompressed, an expression index, a bytea value and a role
name (globals).  A physical and a logical (all databases + globals) backup
are taken, and every byte of every file in the repository and in the key
file's directory is searched for every marker, raw and hex-encoded.

The positive control decrypts the same backups with the key and finds every
marker in the plaintext: the markers really are in the backups, so their
absence from the stored bytes is the encryption's doing.  Compression level 0
is the case where a leak would show (zstd would otherwise blur it).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from ebk.keys.keyfile import KeyFileProvider
from ebk.restore.reader import open_object
from ebk.restore.session import open_backup
from ebk.runtime import Runtime
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster, init_cluster

TOKEN = secrets.token_hex(6)
MARKERS = {
    "heap": f"EBKMARK-heap-{TOKEN}",
    "toast": f"EBKMARK-toast-{TOKEN}",
    "index": f"EBKMARK-index-{TOKEN}",
    "bytea": f"EBKMARK-bytea-{TOKEN}",
    "role": f"ebkmark_role_{TOKEN}",
}


def forms(marker: str) -> list[bytes]:
    """The marker as it may appear: raw, and as bytea hex output in a dump."""
    raw = marker.encode()
    return [raw, raw.hex().encode(), raw.hex().upper().encode()]


@pytest.fixture(scope="module")
def marked_cluster() -> Iterator[PgCluster]:
    cluster = init_cluster()
    m = MARKERS
    try:
        cluster.psql("CREATE DATABASE marked")
        cluster.psql(f'CREATE ROLE "{m["role"]}" NOLOGIN')
        cluster.psql(
            "CREATE TABLE notes (id int PRIMARY KEY, note text);"
            f"INSERT INTO notes SELECT g, 'note ' || g || ' {m['heap']}' "
            "FROM generate_series(1, 50) g;"
            "CREATE TABLE docs (id int PRIMARY KEY, body text);"
            "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;"
            f"INSERT INTO docs SELECT 1, string_agg(md5(g::text) || ' {m['toast']} ', '') "
            "FROM generate_series(1, 3000) g;"
            "CREATE TABLE tagged (id int PRIMARY KEY, v text);"
            "INSERT INTO tagged SELECT g, 'v' || g FROM generate_series(1, 200) g;"
            f"CREATE INDEX tagged_expr ON tagged ((v || '{m['index']}'));"
            "CREATE TABLE bin (id int PRIMARY KEY, b bytea);"
            f"INSERT INTO bin VALUES (1, convert_to('{m['bytea']}', 'UTF8'));"
            "CHECKPOINT;",
            db="marked",
        )
        # the guards: the value really is out of line, and uncompressed
        assert cluster.psql("SELECT pg_column_size(body) > 150000 FROM docs", db="marked") == "t"
        yield cluster
    finally:
        cluster.destroy()


def found_in_stream(chunks: Iterable[bytes], markers: dict[str, str]) -> set[str]:
    """Markers present in a stream of bytes, searched with overlap (bounded memory)."""
    patterns = {name: forms(marker) for name, marker in markers.items()}
    overlap = max(len(p) for ps in patterns.values() for p in ps)
    found: set[str] = set()
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        for name, ps in patterns.items():
            if name not in found and any(p in window for p in ps):
                found.add(name)
        tail = window[-overlap:]
    return found


def read_file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            yield block


def decrypted(env: EbkEnv, backup_id: str) -> Iterator[bytes]:
    repo = Runtime.load(env.config_path).repository
    manifest = repo.read_manifest(backup_id)
    backup = open_backup(repo, manifest, [KeyFileProvider(env.keyfile)], kind=manifest.kind)
    for stored in manifest.objects:
        with open_object(backup, stored) as reader:
            while block := reader.read(1 << 20):
                yield block
            reader.finish()


@pytest.mark.parametrize("level", [0, 3])
def test_no_marker_anywhere_in_the_repository(
    marked_cluster: PgCluster, tmp_path: Path, level: int
) -> None:
    env = make_env(
        tmp_path / "ebk", marked_cluster, extra=f"\n[backup]\ncompression_level = {level}\n"
    )
    physical = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    logical = json.loads(env.run("backup", "--type", "logical", "--json").stdout)
    assert "marked" in logical["databases"]

    # Positive control: with the key, every marker is in each backup's plaintext.
    assert found_in_stream(decrypted(env, physical["backup_id"]), MARKERS) == set(MARKERS)
    assert found_in_stream(decrypted(env, logical["backup_id"]), MARKERS) == set(MARKERS)

    # Without it, not one marker in any form in any file: repository, key file, config.
    files = [p for p in env.root.rglob("*") if p.is_file()]
    assert env.keyfile in files and env.config_path in files
    stored = [p for p in files if p.suffix == ".ebk"]
    assert len(stored) == len(physical["objects"]) + len(logical["objects"])
    leaks = {
        str(p.relative_to(env.root)): found
        for p in files
        if (found := found_in_stream(read_file(p), MARKERS))
    }
    assert leaks == {}
