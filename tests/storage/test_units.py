"""Fast tests (no emulator): retries, bounded buffers, config, URLs, `ebk repo check`."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ebk.config import StorageConfig, load_config
from ebk.errors import ConfigError, ObjectExists, StorageCredentialsError, StorageError
from ebk.storage.factory import open_storage
from ebk.storage.retry import Failure, Retrier
from ebk.storage.transfer import PartPipeline, RangeReader
from tests.support.ebkenv import make_env

MIB = 1024 * 1024


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def classify(exc: Exception, what: str) -> Failure | None:
    if isinstance(exc, Flaky):
        return Failure(True, StorageError(f"{what}: flaky"))
    if isinstance(exc, Fatal):
        return Failure(False, StorageCredentialsError(f"{what}: fatal"))
    return None


def quiet_retrier(max_retries: int = 3) -> tuple[Retrier, list[float]]:
    waits: list[float] = []
    return Retrier(classify, max_retries, 0.1, 1.0, sleep=waits.append), waits


def test_transient_errors_are_retried_then_succeed() -> None:
    retrier, waits = quiet_retrier()
    calls = iter([Flaky(), Flaky(), "ok"])

    def op() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return str(item)

    assert retrier.call("op", op) == "ok"
    assert len(waits) == 2
    assert 0 <= waits[0] <= 0.1 and 0 <= waits[1] <= 0.2  # full jitter under the cap


def test_retries_are_bounded_and_say_so() -> None:
    retrier, waits = quiet_retrier(max_retries=3)
    count = 0

    def op() -> None:
        nonlocal count
        count += 1
        raise Flaky()

    with pytest.raises(StorageError, match="gave up after 4 attempts"):
        retrier.call("op", op)
    assert count == 4 and len(waits) == 3


def test_permanent_errors_are_never_retried() -> None:
    retrier, waits = quiet_retrier()
    count = 0

    def op() -> None:
        nonlocal count
        count += 1
        raise Fatal()

    with pytest.raises(StorageCredentialsError):
        retrier.call("op", op)
    assert count == 1 and waits == []


def test_foreign_exceptions_propagate_unchanged() -> None:
    retrier, _ = quiet_retrier()
    with pytest.raises(ZeroDivisionError):
        retrier.call("op", lambda: 1 / 0)


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    retrier = Retrier(classify, 10, 0.5, 4.0)
    caps = [min(4.0, 0.5 * 2**n) for n in range(8)]
    for attempt, cap in enumerate(caps):
        samples = [retrier.delay(attempt) for _ in range(200)]
        assert max(samples) <= cap and max(samples) > cap * 0.8


def test_part_pipeline_bounds_memory_and_keeps_order() -> None:
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def upload(number: int, data: bytearray) -> int:
        time.sleep(0.01)
        with lock:
            seen.append((number, len(data)))
        return number

    pipe: PartPipeline[int] = PartPipeline(
        upload, part_size=lambda n: MIB, in_flight=2, workers=2, name="t"
    )
    piece = b"x" * (64 * 1024 + 1)
    total = 0
    for _ in range(300):  # ~19 MiB
        pipe.write(piece)
        total += len(piece)
    results = pipe.finish()
    assert results == list(range(1, len(results) + 1))
    assert sum(size for _n, size in seen) == total
    assert pipe.peak_buffered <= 3 * MIB  # part_size * (in_flight + 1)
    assert pipe.buffered == 0


def test_part_pipeline_reports_an_upload_error_to_the_writer() -> None:
    def upload(number: int, data: bytearray) -> None:
        if number == 2:
            raise StorageError("part 2 failed")

    pipe: PartPipeline[None] = PartPipeline(
        upload, part_size=lambda n: 1024, in_flight=1, workers=1, name="t"
    )
    with pytest.raises(StorageError, match="part 2 failed"):
        for _ in range(100):
            pipe.write(b"y" * 1000)
        pipe.finish()
    pipe.cancel()


def test_range_reader_retries_chunks_and_checks_lengths() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    retrier, _ = quiet_retrier()
    failed: set[int] = set()

    def fetch(start: int, end: int) -> bytes:
        def once() -> bytes:
            if start not in failed:
                failed.add(start)
                raise Flaky()
            return data[start : end + 1]

        return retrier.call("read", once)

    with RangeReader(fetch, len(data), chunk=100_000, ahead=3, name="t") as reader:
        out = b""
        while chunk := reader.read(77_777):
            out += chunk
    assert out == data and len(failed) == 11

    short = RangeReader(lambda s, e: b"abc", 10, chunk=5, ahead=1, name="t")
    with pytest.raises(StorageError, match="changed or was truncated"):
        short.read()
    short.close()


def test_s3_part_size_grows_so_10000_parts_reach_about_a_terabyte() -> None:
    from ebk.storage.s3 import MAX_PARTS, part_size_for

    assert part_size_for(16 * MIB, 1) == 16 * MIB
    assert part_size_for(16 * MIB, 2001) == 32 * MIB
    assert sum(part_size_for(16 * MIB, n) for n in range(1, MAX_PARTS + 1)) > 900 * 1024**3


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("part_size", 1024 * 1024, "part_size"),
        ("part_size", 5 * MIB + 1, "part_size"),
        ("parts_in_flight", 0, "parts_in_flight"),
        ("addressing_style", "sideways", "addressing_style"),
        ("object_lock_mode", "strict", "object_lock_mode"),
        ("object_lock_days", -1, "object_lock_days"),
    ],
)
def test_storage_config_rejects_bad_values(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        StorageConfig(**{key: value}).validate()  # type: ignore[arg-type]


def test_storage_config_from_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "ebk.toml"
    path.write_text('[storage]\nendpoint_url = "http://127.0.0.1:9000"\npart_size = 8388608\n')
    config = load_config(
        path, {"EBK_STORAGE__PARTS_IN_FLIGHT": "6", "EBK_STORAGE__ADDRESSING_STYLE": "path"}
    )
    assert config.storage.part_size == 8 * MIB
    assert config.storage.parts_in_flight == 6
    assert config.storage.addressing_style == "path"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://host/x", "unsupported scheme"),
        ("s3:///prefix", "names no bucket"),
        ("s3://bucket/p?region=x", "options go in"),
        ("file://host/x", "local path"),
    ],
)
def test_repository_urls_are_checked(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        open_storage(url, StorageConfig())


def test_object_lock_is_refused_where_it_is_not_implemented() -> None:
    with pytest.raises(ConfigError, match="S3 only"):
        open_storage("gs://bucket/x", StorageConfig(object_lock_days=3))


def test_azure_needs_an_account_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from ebk.storage.azure import parse_connection_string

    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="azure_account_url"):
        open_storage("azure://container/x", StorageConfig())
    parsed = parse_connection_string("AccountName=a;AccountKey=k==;BlobEndpoint=http://h/a;")
    assert parsed == {"accountname": "a", "accountkey": "k==", "blobendpoint": "http://h/a"}


def test_s3_virtual_host_addressing_puts_the_bucket_in_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No emulator resolves bucket.HOST here, so botocore's send is stubbed (recorded)."""
    import boto3
    from botocore.awsrequest import AWSResponse
    from botocore.compat import HTTPHeaders

    from ebk.storage.s3 import S3Storage

    urls: list[str] = []
    real_client = boto3.session.Session.client

    def client(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = real_client(self, *args, **kwargs)

        def record(request: Any, **_: Any) -> AWSResponse:
            urls.append(request.url)
            body = (
                b'<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated>'
                b"</ListBucketResult>"
            )
            return AWSResponse(request.url, 200, HTTPHeaders(), _Raw(body))

        made.meta.events.register("before-send.s3", record)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    S3Storage(
        "my-bucket",
        "p",
        StorageConfig(
            endpoint_url="https://s3.example.test", region="eu-west-1", addressing_style="virtual"
        ),
    )
    S3Storage(
        "my-bucket",
        "p",
        StorageConfig(
            endpoint_url="https://s3.example.test", region="eu-west-1", addressing_style="path"
        ),
    )
    assert urls[0].startswith("https://my-bucket.s3.example.test/")
    assert urls[1].startswith("https://s3.example.test/my-bucket")


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body

    def read(self, *_: Any) -> bytes:
        body, self._body = self._body, b""
        return body


def test_backup_id_times() -> None:
    from ebk.repository.layout import backup_id_time, is_backup_id, new_backup_id

    assert backup_id_time("20261128T142301Z-3fa9c1") == datetime(
        2026, 11, 28, 14, 23, 1, tzinfo=UTC
    )
    assert backup_id_time("20261128T142301000042Z-3fa9c1") == datetime(
        2026, 11, 28, 14, 23, 1, 42, tzinfo=UTC
    )
    assert backup_id_time("garbage") is None
    assert not is_backup_id("../../etc") and not is_backup_id("20261128T142301Z-3fa9c1/x")
    # Ids taken within one second sort in the order they were taken.
    ids = [new_backup_id(datetime(2026, 1, 1, 0, 0, 0, us, tzinfo=UTC)) for us in (1, 20, 300)]
    assert sorted(ids) == ids and all(is_backup_id(i) for i in ids)


def test_repo_check_on_a_local_repository(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None)
    storage = open_storage(f"file://{env.repo_dir}")
    old_id = "20200101T000000Z-aaaaaa"
    young_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-bbbbbb"
    storage.put_bytes(f"backups/{old_id}/key.json", b"{}")
    storage.put_bytes(f"backups/{young_id}/key.json", b"{}")
    writer = storage.open_write(f"backups/{old_id}/base.tar.ebk")
    writer.write(b"partial")
    writer._file.close()  # type: ignore[attr-defined]  # a crash: neither commit nor abort
    for partial in env.repo_dir.rglob(".ebk-partial-*"):
        os.utime(partial, (0, time.time() - 3 * 86400))  # crashed three days ago
    os.utime(env.repo_dir / f"backups/{old_id}/key.json", (0, time.time() - 3 * 86400))

    report = json.loads(env.run("repo", "check", "--json").stdout)
    assert [b["backup_id"] for b in report["incomplete_backups"]] == [old_id, young_id]
    assert [u["name"] for u in report["orphaned_uploads"]] == [f"backups/{old_id}/base.tar.ebk"]
    out = env.run("repo", "check", "--clean").stdout
    assert "removed" in out and "may be running" in out
    after = json.loads(env.run("repo", "check", "--json").stdout)
    assert [b["backup_id"] for b in after["incomplete_backups"]] == [young_id]
    assert after["orphaned_uploads"] == []
    bad = env.run("repo", "check", "--older-than", "soon", expect=2)
    assert "not a duration" in bad.output


def test_object_exists_is_never_retried() -> None:
    retrier, waits = quiet_retrier()
    calls = []

    def op() -> None:
        calls.append(1)
        raise ObjectExists("object x already exists")

    with pytest.raises(ObjectExists):
        retrier.call("create x", op)
    assert calls == [1] and waits == []


def test_local_list_reads_only_the_prefix_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """list("wal/2026") reads wal/ (for names starting with 2026) and below those only;
    os.scandir is wrapped to record the directories read, not replaced."""
    from ebk.storage import local
    from ebk.storage.local import LocalStorage

    storage = LocalStorage(tmp_path / "repo")
    for name in ("wal/2026/01/a", "wal/2026/02/b", "wal/20261", "wal/2025/x", "backups/b/m"):
        storage.put_bytes(name, b"1")
    read: list[str] = []
    scandir = os.scandir

    def recording(path: Any) -> Any:
        read.append(Path(path).relative_to(storage.root).as_posix())
        return scandir(path)

    monkeypatch.setattr(local.os, "scandir", recording)
    names = [o.name for o in storage.list("wal/2026")]
    assert names == ["wal/2026/01/a", "wal/2026/02/b", "wal/20261"]
    assert sorted(read) == ["wal", "wal/2026", "wal/2026/01", "wal/2026/02"]
    read.clear()
    assert [o.name for o in storage.list("backups/")] == ["backups/b/m"]
    assert sorted(read) == ["backups", "backups/b"]
