"""The Storage contract (storage/base.py), one suite run against every backend.

local runs in the fast tier; s3 (moto), gcs (gcp-storage-emulator) and azure
(Azurite) are marked slow and talk to real emulator processes.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ebk.errors import BucketNotFound, ObjectExists, ObjectNotFound, StorageError
from ebk.storage.base import Storage
from ebk.storage.factory import open_storage
from tests.storage.backends import MIB, Backend

PAYLOAD = os.urandom(MIB) * 12 + os.urandom(123_457)  # 12.1 MiB: three 5 MiB parts


def write_in_pieces(writer: Any, data: bytes, piece: int = 64 * 1024 + 3) -> None:
    for offset in range(0, len(data), piece):
        writer.write(data[offset : offset + piece])


def read_all(storage: Storage, name: str, piece: int = 1_000_003) -> bytes:
    out = bytearray()
    with storage.open_read(name) as f:
        while chunk := f.read(piece):
            out += chunk
    return bytes(out)


def abandon(writer: Any) -> None:
    """What a crash leaves: parts stored, neither committed nor aborted."""
    pipeline = getattr(writer, "pipeline", None)
    if pipeline is not None:
        pipeline.drain()
        pipeline.close()
    else:
        writer._file.close()  # the partial file stays


def test_small_objects_put_get_list_delete(any_backend: Backend) -> None:
    storage = any_backend.open()
    storage.put_bytes("backups/b1/key.json", b'{"k": 1}')
    storage.put_bytes("backups/b1/manifest.json", b"{}")
    storage.put_bytes("other/x", b"x")
    assert storage.get_bytes("backups/b1/key.json") == b'{"k": 1}'
    storage.put_bytes("backups/b1/key.json", b'{"k": 2}')  # KEK rotation rewrites it
    assert storage.get_bytes("backups/b1/key.json") == b'{"k": 2}'
    assert storage.exists("backups/b1/manifest.json")
    assert not storage.exists("backups/b1/missing")
    listed = {o.name: o.size for o in storage.list("backups/")}
    assert listed == {"backups/b1/key.json": 8, "backups/b1/manifest.json": 2}
    assert sorted(o.name for o in storage.list()) == sorted([*listed, "other/x"])
    storage.delete("backups/b1/manifest.json")
    storage.delete("backups/b1/manifest.json")  # missing: not an error
    assert not storage.exists("backups/b1/manifest.json")
    assert any_backend.raw_names() == ["backups/b1/key.json", "other/x"]
    storage.close()


def test_missing_objects_raise_object_not_found(any_backend: Backend) -> None:
    storage = any_backend.open()
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("nope/missing")
    with pytest.raises(ObjectNotFound):
        storage.open_read("nope/missing")


def test_streamed_object_is_invisible_until_commit(any_backend: Backend) -> None:
    storage = any_backend.open()
    writer = storage.open_write("backups/b2/base.tar.ebk")
    write_in_pieces(writer, PAYLOAD)
    assert not storage.exists("backups/b2/base.tar.ebk")
    assert [o.name for o in storage.list()] == []
    assert any_backend.raw_names() == []
    writer.commit()
    assert [(o.name, o.size) for o in storage.list()] == [("backups/b2/base.tar.ebk", len(PAYLOAD))]
    assert read_all(storage, "backups/b2/base.tar.ebk") == PAYLOAD
    assert storage.list_incomplete() == []
    assert any_backend.raw_incomplete() == []
    storage.close()


def test_object_of_exactly_whole_parts_and_tiny_object(any_backend: Backend) -> None:
    storage = any_backend.open()
    exact = PAYLOAD[: 10 * MIB]
    writer = storage.open_write("exact")
    writer.write(exact)
    writer.commit()
    tiny = storage.open_write("tiny")
    tiny.write(b"hello")
    tiny.commit()
    empty = storage.open_write("empty")
    empty.commit()
    assert read_all(storage, "exact") == exact
    assert storage.get_bytes("tiny") == b"hello"
    assert storage.get_bytes("empty") == b""


def test_abort_leaves_nothing(any_backend: Backend) -> None:
    storage = any_backend.open()
    writer = storage.open_write("backups/b3/base.tar.ebk")
    write_in_pieces(writer, PAYLOAD[: 11 * MIB])
    writer.abort()
    writer.abort()  # idempotent
    assert list(storage.list()) == []
    assert storage.list_incomplete() == []
    assert any_backend.raw_names() == []
    assert any_backend.raw_incomplete() == []


def test_interrupted_upload_is_found_and_removed(any_backend: Backend) -> None:
    storage = any_backend.open()
    storage.put_bytes("backups/b4/key.json", b"{}")
    writer = storage.open_write("backups/b4/base.tar.ebk")
    write_in_pieces(writer, PAYLOAD)
    abandon(writer)
    assert [o.name for o in storage.list()] == ["backups/b4/key.json"]
    found = storage.list_incomplete()
    if any_backend.kind == "gcs":
        # GCS has no API listing resumable sessions: they stay invisible and expire.
        assert found == []
        return
    assert [u.name for u in found] == ["backups/b4/base.tar.ebk"]
    assert any_backend.raw_incomplete() != []
    reopened = any_backend.open()  # the next run, in another process
    for upload in reopened.list_incomplete():
        reopened.remove_incomplete(upload)
    assert reopened.list_incomplete() == []
    assert any_backend.raw_incomplete() == []
    assert [o.name for o in reopened.list()] == ["backups/b4/key.json"]


def test_missing_bucket_is_a_distinct_error(cloud_backend: Backend) -> None:
    url = cloud_backend.url.replace(cloud_backend.bucket, "ebk-no-such-bucket")
    with pytest.raises(BucketNotFound) as info:
        open_storage(url, cloud_backend.storage_config())
    assert "ebk-no-such-bucket" in str(info.value)
    assert info.value.exit_code == 4


def test_write_after_commit_is_refused(any_backend: Backend) -> None:
    storage = any_backend.open()
    writer = storage.open_write("once")
    writer.write(b"a")
    writer.commit()
    with pytest.raises(StorageError):
        writer.write(b"b")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_server_side_encryption_is_requested_on_every_write(
    kind: str, request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulators accept but do not record CMEK / encryption scopes, so the proxy checks
    that every write asks for them (S3's SSE-KMS is checked on moto in test_s3.py)."""
    from tests.storage.conftest import backend_for
    from tests.storage.faultproxy import FaultProxy

    backend = backend_for(kind, request, tmp_path, monkeypatch)
    proxy = FaultProxy(int(backend.endpoint.rsplit(":", 1)[1]))
    proxy.start()
    try:
        via = backend.via(proxy.endpoint)
        via.apply_env(monkeypatch)
        option = (
            {"gcs_kms_key_name": "projects/p/locations/l/keyRings/r/cryptoKeys/ebk"}
            if kind == "gcs"
            else {"azure_encryption_scope": "ebkscope"}
        )
        storage = via.open(**option)
        storage.put_bytes("small", b"{}")
        writer = storage.open_write("big")
        write_in_pieces(writer, PAYLOAD)
        writer.commit()
    finally:
        proxy.stop()
    if kind == "gcs":
        creates = [t for m, t, _h in proxy.headers if m == "POST" and "uploadType=" in t]
        assert len(creates) == 2
        assert all("kmsKeyName=projects%2Fp%2Flocations" in t for t in creates)
    else:
        writes = [h for m, t, h in proxy.headers if m == "PUT"]
        assert len(writes) == 1 + 3 + 1  # Put Blob, three blocks, Put Block List
        assert all(h.get("x-ms-encryption-scope") == "ebkscope" for h in writes)
    backend.apply_env(monkeypatch)
    assert read_all(backend.open(), "big") == PAYLOAD


def test_put_if_absent_creates_and_never_overwrites(any_backend: Backend) -> None:
    storage = any_backend.open()
    storage.put_if_absent("locks/lease", b"first writer")
    assert storage.get_bytes("locks/lease") == b"first writer"
    with pytest.raises(ObjectExists) as taken:
        storage.put_if_absent("locks/lease", b"second writer")
    assert "locks/lease" in str(taken.value) and "already exists" in str(taken.value)
    assert taken.value.exit_code == 4
    other = any_backend.open()  # another process
    with pytest.raises(ObjectExists):
        other.put_if_absent("locks/lease", b"third writer")
    assert storage.get_bytes("locks/lease") == b"first writer"
    assert any_backend.raw_names() == ["locks/lease"]
    assert storage.list_incomplete() == [] and any_backend.raw_incomplete() == []
    storage.delete("locks/lease")  # released: free again
    storage.put_if_absent("locks/lease", b"next holder")
    assert storage.get_bytes("locks/lease") == b"next holder"


def test_put_if_absent_concurrent_writers_exactly_one_wins(any_backend: Backend) -> None:
    writers = 8
    stores = [any_backend.open() for _ in range(writers)]
    start = threading.Barrier(writers)

    def attempt(i: int) -> str:
        start.wait()
        try:
            stores[i].put_if_absent("locks/race", f"writer {i}".encode())
            return "won"
        except ObjectExists:
            return "refused"

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(attempt, range(writers)))
    assert sorted(results) == ["refused"] * (writers - 1) + ["won"]
    assert stores[0].get_bytes("locks/race") == f"writer {results.index('won')}".encode()


LISTED = 1_050  # more than one page (1,000) on every backend


def test_list_pages_and_touches_only_the_prefix(any_backend: Backend) -> None:
    """More than 1,000 objects under one prefix: every page arrives, nothing outside."""
    storage = any_backend.open()
    calls: list[str] = []
    if any_backend.kind != "local":  # observe (not replace) the store calls, to count pages
        call = storage._call  # type: ignore[attr-defined]

        def counted(what: str, fn: Any) -> Any:
            calls.append(what)
            return call(what, fn)

        storage._call = counted  # type: ignore[attr-defined]
    inside = [f"wal/2026/{i:05d}" for i in range(LISTED)]
    outside = ["wal/2025/00001", "wal/20260", "walrus", "backups/2026/x", "wal-other/1"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: storage.put_bytes(n, b"w"), inside + outside))
    calls.clear()
    listed = list(storage.list("wal/2026/"))
    assert [o.name for o in listed] == sorted(inside)  # in order, no duplicates, none missing
    assert all(o.size == 1 for o in listed)
    if any_backend.kind != "local":
        assert len([c for c in calls if c.startswith("list")]) == 2  # two pages
    partial = [o.name for o in storage.list("wal/2026")]  # ends in a partial name
    assert partial == sorted([*inside, "wal/20260"])
    assert [o.name for o in storage.list("wal/2025/0000")] == ["wal/2025/00001"]
    assert list(storage.list("nothing/here")) == []
    assert len(list(storage.list())) == LISTED + len(outside)


def creates(method: str, target: str) -> bool:
    """The create request of put_if_absent("locks/lease", ...) on S3, Azure and GCS."""
    return (method == "PUT" and "locks/lease" in target) or (
        method == "POST" and "ifGenerationMatch=0" in target
    )


def test_put_if_absent_retried_after_a_lost_answer(
    cloud_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first create lands but its answer is lost: the retry meets our own object and
    reports success; after a transient failure a different object is still a conflict."""
    from tests.storage.faultproxy import FaultProxy

    proxy = FaultProxy(int(cloud_backend.endpoint.rsplit(":", 1)[1]))
    proxy.start()
    try:
        via = cloud_backend.via(proxy.endpoint)
        via.apply_env(monkeypatch)
        storage = via.open()
        lose = proxy.fail(creates, "lose", times=1)
        storage.put_if_absent("locks/lease", b"holder A, token 1")
        # (proxy.headers records each request as it arrives: no race with the answers)
        assert lose.hits == 1 and sum(creates(m, t) for m, t, _h in proxy.headers) == 2
        assert storage.get_bytes("locks/lease") == b"holder A, token 1"

        proxy.headers.clear()
        unavailable = proxy.fail(creates, 503, times=1)
        with pytest.raises(ObjectExists):
            storage.put_if_absent("locks/lease", b"holder B, token 2")
        assert unavailable.hits == 1 and sum(creates(m, t) for m, t, _h in proxy.headers) == 2
        assert storage.get_bytes("locks/lease") == b"holder A, token 1"
    finally:
        proxy.stop()
