"""Tampered backups in a real local repository are refused, through the CLI.

Two physical backups (A, B) and one logical backup of a real PostgreSQL 15
are taken once; every case works on its own copy of the repository, damages
it one way, and checks that `ebk restore` refuses with the right exit code
(5 integrity, 3 key), says so clearly, and leaves nothing in the target that
looks like a data directory.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ebk.keys.keyfile import create_key_file
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster, init_cluster
from tests.support.refusal import assert_refused
from tests.support.stream_layout import Stored, flip_byte

INTEGRITY = 5
STORAGE = 4
KEY = 3


@dataclass
class Source:
    cluster: PgCluster
    env: EbkEnv
    a: str  # physical
    b: str  # physical, same cluster
    logical: str


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    cluster = init_cluster()
    try:
        # ~4 MB of incompressible rows: base.tar.ebk spans several 1 MiB chunks.
        cluster.psql("CREATE DATABASE app")
        cluster.psql(
            "CREATE EXTENSION pgcrypto;"
            "CREATE TABLE blob (id int PRIMARY KEY, b bytea);"
            "INSERT INTO blob SELECT g, gen_random_bytes(1000) FROM generate_series(1, 4000) g;",
            db="app",
        )
        env = make_env(tmp_path_factory.mktemp("tamper") / "ebk", cluster)
        ids = [
            json.loads(env.run("backup", "--type", kind, *extra, "--json").stdout)["backup_id"]
            for kind, extra in (
                ("physical", ()),
                ("physical", ()),
                ("logical", ("--database", "app")),
            )
        ]
        yield Source(cluster, env, *ids)
    finally:
        cluster.destroy()


@pytest.fixture
def env(source: Source, tmp_path: Path) -> EbkEnv:
    """A private copy of the repository and key file, with its own config."""
    copy = make_env(tmp_path / "ebk", source.cluster, init=False)
    shutil.copytree(source.env.repo_dir, copy.repo_dir)
    shutil.copy2(source.env.keyfile, copy.keyfile)
    return copy


def manifest_file(env: EbkEnv, backup_id: str) -> Path:
    return env.repo_dir / "manifests" / f"{backup_id}.json"


def obj(env: EbkEnv, backup_id: str, name: str) -> Path:
    return env.repo_dir / "backups" / backup_id / name


def assert_no_data_directory(target: Path) -> None:
    """Nothing PostgreSQL would start from, and in fact nothing at all."""
    assert not (target / "global" / "pg_control").exists()
    if target.exists():
        assert sorted(p.name for p in target.rglob("*")) == []


# --- the damage ------------------------------------------------------------


def _edit_chunks(edit: Callable[[list[bytes]], object]) -> Callable[[EbkEnv, Source], None]:
    def tamper(env: EbkEnv, s: Source) -> None:
        path = obj(env, s.a, "base.tar.ebk")
        stored = Stored.read(path)
        assert len(stored.chunks) >= 4, "the fixture must make a multi-chunk object"
        edit(stored.chunks)
        stored.write(path)

    return tamper


def _flip_at(where: Callable[[Stored], int]) -> Callable[[EbkEnv, Source], None]:
    def tamper(env: EbkEnv, s: Source) -> None:
        path = obj(env, s.a, "base.tar.ebk")
        flip_byte(path, where(Stored.read(path)))

    return tamper


def _swap(chunks: list[bytes]) -> None:
    chunks[1], chunks[2] = chunks[2], chunks[1]


def _truncate_mid_chunk(env: EbkEnv, s: Source) -> None:
    path = obj(env, s.a, "base.tar.ebk")
    stored = Stored.read(path)
    path.write_bytes(path.read_bytes()[: stored.chunk_offset(2) + 5000])


def _append(env: EbkEnv, s: Source) -> None:
    with open(obj(env, s.a, "base.tar.ebk"), "ab") as f:
        f.write(b"\x00" * 100)


def _object_from_b(env: EbkEnv, s: Source) -> None:
    shutil.copy(obj(env, s.b, "base.tar.ebk"), obj(env, s.a, "base.tar.ebk"))


def _rename_objects(env: EbkEnv, s: Source) -> None:
    one, two = obj(env, s.a, "base.tar.ebk"), obj(env, s.a, "backup_manifest.ebk")
    tmp = one.with_name("swap")
    one.rename(tmp)
    two.rename(one)
    tmp.rename(two)


def _edit_manifest(
    edit: Callable[[dict[str, object], Source], None], from_b: bool = False
) -> Callable[[EbkEnv, Source], None]:
    def tamper(env: EbkEnv, s: Source) -> None:
        doc = json.loads(manifest_file(env, s.b if from_b else s.a).read_text())
        edit(doc, s)
        manifest_file(env, s.a).write_text(json.dumps(doc, indent=2))

    return tamper


def _size_plus_one(doc: dict[str, object], _s: Source) -> None:
    doc["objects"][0]["stored_size"] += 1  # type: ignore[index]


def _other_sha(doc: dict[str, object], _s: Source) -> None:
    doc["objects"][0]["sha256"] = "0" * 64  # type: ignore[index]


def _claim_a(doc: dict[str, object], s: Source) -> None:
    doc["backup_id"] = s.a


def _drop_mac(doc: dict[str, object], _s: Source) -> None:
    del doc["auth"]


def _key_object_from_b(env: EbkEnv, s: Source) -> None:
    shutil.copy(obj(env, s.b, "key.json"), obj(env, s.a, "key.json"))


def _key_object_from_b_relabelled(env: EbkEnv, s: Source) -> None:
    doc = json.loads(obj(env, s.b, "key.json").read_text())
    doc["backup_id"] = s.a
    doc["context"]["backup_id"] = s.a
    obj(env, s.a, "key.json").write_text(json.dumps(doc))


def _flip_key_slot(env: EbkEnv, s: Source) -> None:
    path = obj(env, s.a, "key.json")
    doc = json.loads(path.read_text())
    wrapped = bytearray(base64.b64decode(doc["slots"][0]["wrapped"]))
    wrapped[20] ^= 0x01
    doc["slots"][0]["wrapped"] = base64.b64encode(wrapped).decode()
    path.write_text(json.dumps(doc))


def _delete_object(env: EbkEnv, s: Source) -> None:
    obj(env, s.a, "base.tar.ebk").unlink()


CASES: list[tuple[str, Callable[[EbkEnv, Source], None], int, str]] = [
    (
        "flip-body-middle",
        _flip_at(lambda st: st.chunk_offset(len(st.chunks) // 2) + 100),
        INTEGRITY,
        r"failed authentication at chunk [1-9]",
    ),
    (
        "flip-salt",
        _flip_at(lambda st: st.salt_offset + 3),
        INTEGRITY,
        "failed authentication at its first chunk",
    ),
    ("flip-key-id", _flip_at(lambda st: 13), INTEGRITY, "names data key"),
    ("flip-chunk-size", _flip_at(lambda st: 11), INTEGRITY, "first chunk"),
    ("flip-final-tag", _flip_at(lambda st: st.size - 1), INTEGRITY, "failed authentication"),
    ("truncate-at-chunk-boundary", _edit_chunks(lambda c: c.pop()), INTEGRITY, "truncated"),
    ("truncate-mid-chunk", _truncate_mid_chunk, INTEGRITY, "failed authentication at chunk 2"),
    ("swap-chunks", _edit_chunks(_swap), INTEGRITY, "failed authentication at chunk 1"),
    (
        "duplicate-chunk",
        _edit_chunks(lambda c: c.insert(2, c[1])),
        INTEGRITY,
        "failed authentication at chunk 2",
    ),
    ("drop-chunk", _edit_chunks(lambda c: c.pop(1)), INTEGRITY, "failed authentication at chunk 1"),
    ("trailing-data", _append, INTEGRITY, "failed authentication"),
    ("object-from-other-backup", _object_from_b, INTEGRITY, "names data key"),
    ("objects-renamed", _rename_objects, INTEGRITY, "first chunk"),
    (
        "manifest-size-edited",
        _edit_manifest(_size_plus_one),
        INTEGRITY,
        "manifest of backup .*: the writer signature does not verify",
    ),
    (
        "manifest-sha-edited",
        _edit_manifest(_other_sha),
        INTEGRITY,
        "manifest of backup .*: the writer signature does not verify",
    ),
    (
        "manifest-from-other-backup",
        _edit_manifest(_claim_a, from_b=True),
        INTEGRITY,
        "manifest of backup .*: the writer signature does not verify",
    ),
    ("manifest-mac-removed", _edit_manifest(_drop_mac), INTEGRITY, "missing member 'auth'"),
    ("key-object-from-other-backup", _key_object_from_b, KEY, "belongs to backup"),
    ("key-object-relabelled", _key_object_from_b_relabelled, KEY, "copied from another backup"),
    ("key-slot-flipped", _flip_key_slot, KEY, "does not unwrap"),
]


# Every other case restores into an existing empty directory (it must be left
# empty), the rest into a new one (it must be removed again).
@pytest.mark.parametrize(
    ("tamper", "code", "message", "target_exists"),
    [(*c[1:], i % 2 == 1) for i, c in enumerate(CASES)],
    ids=[c[0] for c in CASES],
)
def test_tampered_physical_backup_is_refused(
    source: Source,
    env: EbkEnv,
    tmp_path: Path,
    tamper: Callable[[EbkEnv, Source], None],
    code: int,
    message: str,
    target_exists: bool,
) -> None:
    tamper(env, source)
    target = tmp_path / "restored"
    if target_exists:
        target.mkdir()
    result = env.run("restore", source.a, "--to", str(target), expect=code)
    assert "ebk: error:" in result.stderr
    assert "Traceback" not in result.output
    assert re.search(message, result.stderr), result.stderr
    assert_no_data_directory(target)


def test_untampered_copy_restores(source: Source, env: EbkEnv, tmp_path: Path) -> None:
    """The control: the same copy, undamaged, restores (and passes pg_verifybackup)."""
    target = tmp_path / "restored"
    env.run("restore", source.a, "--to", str(target))
    assert (target / "global" / "pg_control").is_file()


def test_missing_data_object_is_refused(source: Source, env: EbkEnv, tmp_path: Path) -> None:
    """A data object missing from an authenticated manifest is a damaged backup (5)."""
    _delete_object(env, source)
    target = tmp_path / "restored"
    result = env.run("restore", source.a, "--to", str(target), expect=None)
    assert_no_data_directory(target)
    assert_refused(result, INTEGRITY, mentions=["base.tar.ebk", "missing from the repository"])


def test_wrong_key_file_is_refused(source: Source, env: EbkEnv, tmp_path: Path) -> None:
    env.keyfile.unlink()
    create_key_file(env.keyfile)  # a different, valid KEK
    target = tmp_path / "restored"
    result = env.run("restore", source.a, "--to", str(target), expect=KEY)
    assert "which is not in" in result.stderr and str(env.keyfile) in result.stderr
    assert_no_data_directory(target)
    env.run("restore", source.logical, "--to-db", "never_created", "--create", expect=KEY)
    assert (
        source.cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'never_created'")
        == "0"
    )


@pytest.mark.parametrize(("where", "code"), [("body", INTEGRITY), ("key", KEY)])
def test_tampered_logical_backup_is_refused(
    source: Source, env: EbkEnv, where: str, code: int
) -> None:
    if where == "body":
        path = obj(env, source.logical, "dump-0001.ebk")
        stored = Stored.read(path)
        flip_byte(path, stored.chunk_offset(len(stored.chunks) - 1) + 10)
    else:
        shutil.copy(obj(env, source.b, "key.json"), obj(env, source.logical, "key.json"))
    target_db = f"tampered_{where}"
    result = env.run("restore", source.logical, "--to-db", target_db, "--create", expect=code)
    assert "ebk: error:" in result.stderr
    assert (
        source.cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{target_db}'")
        == "0"
    )
