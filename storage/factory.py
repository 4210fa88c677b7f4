"""Turn a repository URL into a Storage backend.

    file:///path               local directory
    s3://bucket[/prefix]       S3 or S3-compatible (storage.endpoint_url)
    gs://bucket[/prefix]       Google Cloud Storage
    azure://container[/prefix] Azure Blob (account from storage.azure_account_url or the env)

Drivers are imported only for the scheme in use, so a local repository never
loads a cloud SDK.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ebk.config import StorageConfig
from ebk.errors import ConfigError
from ebk.storage.base import Storage

SCHEMES_HINT = (
    "use file:///path, s3://bucket/prefix, gs://bucket/prefix or azure://container/prefix"
)


def open_storage(url: str, config: StorageConfig | None = None) -> Storage:
    """Open the backend a repository URL names; commands never import a driver."""
    config = config or StorageConfig()
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"repository.url {url!r}: file URLs name a local path",
                hint="write file:///absolute/path (three slashes)",
            )
        if not parsed.path.startswith("/"):
            raise ConfigError(f"repository.url {url!r}: the path must be absolute")
        from ebk.storage.local import LocalStorage

        return LocalStorage(Path(parsed.path))
    if parsed.scheme in ("s3", "gs", "azure"):
        if not parsed.netloc:
            raise ConfigError(
                f"repository.url {url!r} names no bucket or container", hint=SCHEMES_HINT
            )
        if parsed.query or parsed.fragment or parsed.params:
            raise ConfigError(f"repository.url {url!r}: options go in [storage], not the URL")
        bucket, prefix = parsed.netloc, parsed.path.strip("/")
        if parsed.scheme != "s3" and config.object_lock_days:
            raise ConfigError(
                f"storage.object_lock_days is implemented for S3 only, not {parsed.scheme}://",
                hint="use a bucket retention policy (GCS) or a container immutability policy "
                "(Azure), set by an administrator, and object_lock_days = 0",
            )
        if parsed.scheme == "s3":
            from ebk.storage.s3 import S3Storage

            return S3Storage(bucket, prefix, config)
        if parsed.scheme == "gs":
            from ebk.storage.gcs import GcsStorage

            return GcsStorage(bucket, prefix, config)
        from ebk.storage.azure import AzureStorage

        return AzureStorage(bucket, prefix, config)
    raise ConfigError(
        f"repository.url {url!r}: unsupported scheme {parsed.scheme!r}", hint=SCHEMES_HINT
    )
