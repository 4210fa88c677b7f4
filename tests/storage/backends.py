"""One Backend per repository kind: how to open it, configure ebk for it, and look inside.

The ``raw_*`` helpers ask the emulator directly (not through ebk), so tests
check what really is in the bucket: committed objects and unfinished uploads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
from azure.storage.blob import BlobServiceClient
from google.cloud import storage as gcs

from ebk.config import StorageConfig
from ebk.storage.base import Storage
from ebk.storage.factory import open_storage
from ebk.storage.local import PARTIAL_MARK
from tests.support.emulators import azurite_connection_string

MIB = 1024 * 1024
# Small parts so a few MiB exercise multipart uploads; fast retries for fault tests.
TEST_OPTIONS: dict[str, Any] = {
    "part_size": 5 * MIB,
    "parts_in_flight": 2,
    "max_retries": 4,
    "retry_base_delay": 0.05,
    "retry_max_delay": 0.5,
    "timeout": 20.0,
}


@dataclass
class Backend:
    kind: str  # local | s3 | gcs | azure
    bucket: str  # bucket, container, or the local directory
    prefix: str
    endpoint: str  # the emulator's endpoint ('' for local)
    env: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=lambda: dict(TEST_OPTIONS))

    @property
    def url(self) -> str:
        scheme = {"local": "file://", "s3": "s3://", "gcs": "gs://", "azure": "azure://"}[self.kind]
        return f"{scheme}{self.bucket}/{self.prefix}"

    def storage_config(self, **over: Any) -> StorageConfig:
        return StorageConfig(**{**self.options, **over})

    def open(self, **over: Any) -> Storage:
        return open_storage(self.url, self.storage_config(**over))

    def via(self, endpoint: str) -> Backend:
        """The same bucket reached through another endpoint (a fault proxy)."""
        other = replace(self, endpoint=endpoint, env=dict(self.env), options=dict(self.options))
        if self.kind == "s3":
            other.options["endpoint_url"] = endpoint
        elif self.kind == "gcs":
            other.env["STORAGE_EMULATOR_HOST"] = endpoint
        elif self.kind == "azure":
            other.options["azure_account_url"] = f"{endpoint}/devstoreaccount1"
        return other

    def storage_toml(self, **over: Any) -> str:
        """The [storage] section for an ebk config file (the URL goes in EBK_REPOSITORY__URL)."""
        lines = ["[storage]"]
        for key, value in {**self.options, **over}.items():
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
        return "\n".join(lines) + "\n\n"

    def apply_env(self, monkeypatch: Any) -> None:
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)

    # -- looking inside, bypassing ebk ---------------------------------------

    def _full(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def raw_names(self, under: str = "") -> list[str]:
        """Committed object names below the repository prefix (and ``under``)."""
        return [n for n in self._raw_names() if n.startswith(under)]

    def _raw_names(self) -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        if self.kind == "local":
            root = Path(self.bucket) / self.prefix
            return sorted(
                p.relative_to(root).as_posix()
                for p in root.rglob("*")
                if p.is_file() and not p.name.startswith(PARTIAL_MARK)
            )
        if self.kind == "s3":
            pages = (
                self.s3()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self.bucket, Prefix=self._full(""))
            )
            return sorted(o["Key"][strip:] for page in pages for o in page.get("Contents", []))
        if self.kind == "gcs":
            return sorted(
                b.name[strip:] for b in self.gcs().list_blobs(self.bucket, prefix=self._full(""))
            )
        container = self.azure().get_container_client(self.bucket)
        return sorted(b.name[strip:] for b in container.list_blobs(name_starts_with=self._full("")))

    def raw_incomplete(self) -> list[str]:
        """Unfinished uploads as the store itself reports them."""
        if self.kind == "local":
            root = Path(self.bucket) / self.prefix
            return sorted(p.name for p in root.rglob(f"{PARTIAL_MARK}*"))
        if self.kind == "s3":
            uploads = self.s3().list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
            return sorted(u["Key"] for u in uploads)
        if self.kind == "gcs":
            return []  # GCS has no API that lists resumable sessions
        container = self.azure().get_container_client(self.bucket)
        every = {b.name for b in container.list_blobs(include=["uncommittedblobs"])}
        committed = {b.name for b in container.list_blobs()}
        return sorted(every - committed)

    def raw_put(self, name: str, data: bytes) -> None:
        if self.kind == "s3":
            self.s3().put_object(Bucket=self.bucket, Key=self._full(name), Body=data)
        elif self.kind == "gcs":
            self.gcs().bucket(self.bucket).blob(self._full(name)).upload_from_string(data)
        elif self.kind == "azure":
            self.azure().get_blob_client(self.bucket, self._full(name)).upload_blob(data)
        else:
            path = Path(self.bucket) / self.prefix / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def gcs(self) -> gcs.Client:
        os.environ.setdefault("STORAGE_EMULATOR_HOST", self.env.get("STORAGE_EMULATOR_HOST", ""))
        return gcs.Client()

    def azure(self) -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(azurite_connection_string(self.endpoint))


def make_backend(kind: str, endpoint: str, bucket: str, tmp: Path) -> Backend:
    """Create a fresh bucket (or directory) for one test."""
    if kind == "local":
        return Backend("local", str(tmp / "repo"), "ebk", "")
    if kind == "s3":
        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        backend = Backend("s3", bucket, "ebk/repo", endpoint, env)
        backend.options.update(endpoint_url=endpoint, addressing_style="path")
        backend.s3().create_bucket(Bucket=bucket)
        return backend
    if kind == "gcs":
        backend = Backend("gcs", bucket, "ebk/repo", endpoint, {"STORAGE_EMULATOR_HOST": endpoint})
        os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        try:
            gcs.Client().create_bucket(bucket)
        finally:
            del os.environ["STORAGE_EMULATOR_HOST"]
        return backend
    backend = Backend(
        "azure",
        bucket,
        "ebk/repo",
        endpoint,
        {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(endpoint)},
    )
    backend.azure().create_container(bucket)
    return backend
