"""S3 specifics against moto: Object Lock, SSE-KMS, distinct auth errors, bounded memory."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import boto3
import pytest

from ebk.errors import ObjectLocked, StorageCredentialsError, StoragePermissionDenied
from ebk.storage.s3 import S3Storage, S3Writer
from tests.storage.backends import MIB, Backend
from tests.support.ebkenv import make_env
from tests.support.emulators import Server, run_moto
from tests.support.postgres import PgCluster

pytestmark = pytest.mark.slow


def test_object_lock_retention_is_set_and_delete_refuses(
    s3_backend: Backend, pg_cluster: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = s3_backend.s3()
    s3.delete_bucket(Bucket=s3_backend.bucket)
    s3.create_bucket(Bucket=s3_backend.bucket, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("EBK_REPOSITORY__URL", s3_backend.url)
    env = make_env(tmp_path / "ebk", pg_cluster, extra=s3_backend.storage_toml(object_lock_days=2))
    manifest = json.loads(
        env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
    )
    backup_id = manifest["backup_id"]
    for name in (
        f"manifests/{backup_id}.json",
        f"backups/{backup_id}/key.json",
        f"backups/{backup_id}/{manifest['objects'][0]['name']}",
    ):
        head = s3.head_object(Bucket=s3_backend.bucket, Key=f"{s3_backend.prefix}/{name}")
        assert head["ObjectLockMode"] == "GOVERNANCE"
        until = head["ObjectLockRetainUntilDate"]
        assert timedelta(days=1, hours=23) < until - datetime.now(UTC) <= timedelta(days=2)

    result = env.run("delete", backup_id, "--yes", expect=4)
    assert "Object Lock retention" in result.output and "cannot be deleted" in result.output
    assert [b["backup_id"] for b in json.loads(env.run("list", "--json").stdout)] == [backup_id]
    assert f"manifests/{backup_id}.json" in s3_backend.raw_names()
    # Even bypassing ebk, the locked version cannot be removed.
    versions = s3.list_object_versions(Bucket=s3_backend.bucket)["Versions"]
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(
            Bucket=s3_backend.bucket, Key=versions[0]["Key"], VersionId=versions[0]["VersionId"]
        )


def test_object_lock_needs_a_lock_enabled_bucket(s3_backend: Backend) -> None:
    from ebk.errors import ConfigError

    with pytest.raises(ConfigError, match="has no Object Lock"):
        s3_backend.open(object_lock_days=1)


def test_expired_retention_allows_delete(s3_backend: Backend) -> None:
    s3 = s3_backend.s3()
    s3.delete_bucket(Bucket=s3_backend.bucket)
    s3.create_bucket(Bucket=s3_backend.bucket, ObjectLockEnabledForBucket=True)
    storage = s3_backend.open()
    storage.put_bytes("old", b"x")
    s3.put_object_retention(
        Bucket=s3_backend.bucket,
        Key=f"{s3_backend.prefix}/old",
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(days=1)},
    )
    with pytest.raises(ObjectLocked):
        storage.delete("old")
    s3.put_object_retention(
        Bucket=s3_backend.bucket,
        Key=f"{s3_backend.prefix}/old",
        BypassGovernanceRetention=True,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC) - timedelta(days=1)},
    )
    storage.delete("old")
    assert not storage.exists("old")


def test_sse_kms_is_requested_for_every_object(s3_backend: Backend) -> None:
    key_id = "arn:aws:kms:us-east-1:123456789012:key/ebk-test-key"
    storage = s3_backend.open(sse_kms_key_id=key_id)
    storage.put_bytes("small", b"{}")
    writer = storage.open_write("big")
    writer.write(os.urandom(11 * MIB))
    writer.commit()
    s3 = s3_backend.s3()
    for name in ("small", "big"):
        head = s3.head_object(Bucket=s3_backend.bucket, Key=f"{s3_backend.prefix}/{name}")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == key_id


def test_memory_stays_bounded_for_a_long_stream(s3_backend: Backend) -> None:
    """96 MiB in 64 KiB writes: never more than part_size * (parts_in_flight + 1) buffered."""
    storage = s3_backend.open(part_size=5 * MIB, parts_in_flight=3)
    writer = cast(S3Writer, storage.open_write("long"))
    block = os.urandom(64 * 1024)
    digest = hashlib.sha256()
    for _ in range(96 * 16):
        writer.write(block)
        digest.update(block)
    writer.commit()
    assert writer.pipeline.peak_buffered <= 5 * MIB * 4
    assert writer.pipeline.parts_sent == 20  # ceil(96 / 5)
    read = hashlib.sha256()
    with storage.open_read("long") as f:
        while chunk := f.read(MIB):
            read.update(chunk)
    assert read.hexdigest() == digest.hexdigest()


@pytest.fixture(scope="module")
def moto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second moto that checks credentials and IAM policies after 4 setup calls."""
    with run_moto(
        tmp_path_factory.mktemp("moto-auth"),
        name="moto-auth",
        env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"},
    ) as server:
        root: dict[str, Any] = {
            "endpoint_url": server.endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
        }
        boto3.client("s3", **root).create_bucket(Bucket="ebk-auth")
        iam = boto3.client("iam", **root)
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(
            UserName="reader",
            PolicyName="list-only",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "*"}
                    ],
                }
            ),
        )
        server.env = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        yield server


def test_bad_credentials_and_missing_permission_are_distinct(
    moto_auth: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ebk.config import StorageConfig

    config = StorageConfig(
        endpoint_url=moto_auth.endpoint,
        addressing_style="path",
        region="us-east-1",
        max_retries=1,
        retry_base_delay=0.01,
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEBKWRONGWRONG000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageCredentialsError) as bad:
        S3Storage("ebk-auth", "repo", config)
    assert "credentials were rejected" in str(bad.value) and "wrong-secret" not in str(bad.value)

    for name, value in moto_auth.env.items():
        monkeypatch.setenv(name, value)
    storage = S3Storage("ebk-auth", "repo", config)  # listing is allowed
    with pytest.raises(StoragePermissionDenied) as denied:
        storage.put_bytes("x", b"1")
    assert "s3:PutObject" in str(denied.value)
    assert denied.value.exit_code == 4


def test_delete_is_one_request_in_an_unversioned_bucket(s3_backend: Backend) -> None:
    """One DELETE per object (the versioning is asked once per process); a missing object
    is not an error.  A versioned bucket keeps HEAD + DELETE (test_expired_retention...)."""
    from tests.storage.faultproxy import FaultProxy

    proxy = FaultProxy(int(s3_backend.endpoint.rsplit(":", 1)[1]))
    proxy.start()
    try:
        storage = s3_backend.via(proxy.endpoint).open()
        for name in ("a", "b", "c"):
            storage.put_bytes(name, b"x")
        proxy.headers.clear()  # requests are recorded as they arrive, before the answer
        for name in ("a", "b", "c", "missing"):
            storage.delete(name)
        methods = [(m, t.split("?")[1] if "?" in t else "") for m, t, _h in proxy.headers]
    finally:
        proxy.stop()
    assert methods == [("GET", "versioning"), *[("DELETE", "")] * 4]
    assert s3_backend.raw_names() == []


def test_attacks_on_an_object_locked_bucket(
    s3_backend: Backend, pg_cluster: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 on S3 with Object Lock, as a bucket writer without keys: a plain DELETE
    hides the newest manifest (the locked version stays); planted manifests claim the
    retention windows. `latest` is refused, retention deletes nothing real."""
    s3 = s3_backend.s3()
    s3.delete_bucket(Bucket=s3_backend.bucket)
    s3.create_bucket(Bucket=s3_backend.bucket, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("EBK_REPOSITORY__URL", s3_backend.url)
    env = make_env(tmp_path / "ebk", pg_cluster, extra=s3_backend.storage_toml(object_lock_days=2))
    ids = [
        json.loads(
            env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
        )["backup_id"]
        for _ in range(2)
    ]
    env.run("list")  # this host has seen the newest
    prefix = s3_backend.prefix
    newest_key = f"{prefix}/manifests/{ids[1]}.json"
    template = s3.get_object(Bucket=s3_backend.bucket, Key=newest_key)["Body"].read()
    s3.delete_object(Bucket=s3_backend.bucket, Key=newest_key)  # a delete marker
    for day in range(1, 11):
        when = datetime.now(UTC) + timedelta(days=day)
        planted = when.strftime("%Y%m%dT%H%M%S000000Z") + f"-{day:06x}"
        doc = dict(json.loads(template), backup_id=planted, start_time=when.isoformat())
        s3.put_object(
            Bucket=s3_backend.bucket,
            Key=f"{prefix}/manifests/{planted}.json",
            Body=json.dumps(doc).encode(),
        )
    listed = env.run("list", "--json")
    assert [b["backup_id"] for b in json.loads(listed.stdout)] == [ids[0]]
    assert "not signed" in listed.stderr or "does not verify" in listed.stderr
    refused = env.run("restore", "latest", "--to-db", "never", "--create", expect=5)
    assert "refusing to choose `latest`" in refused.stderr
    result = json.loads(env.run("retention", "--json").stdout)
    assert result["deleted"] == []  # min_age keeps the real one; planted are never counted
    assert [d["backup_id"] for d in result["decisions"]] == [ids[0]]
