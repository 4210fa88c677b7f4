"""What the object-store backends (S3, GCS, Azure) share: names under the
repository URL's prefix, and every call through the retrier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ebk.config import StorageConfig
from ebk.storage.base import check_name
from ebk.storage.retry import Failure, Retrier


class PrefixedStore:
    """Maps object names to keys below ``prefix`` (no prefix: the bucket root)."""

    prefix: str
    config: StorageConfig
    url: str
    retrier: Retrier

    def _locate(self, scheme: str, bucket: str, prefix: str, config: StorageConfig) -> None:
        """Set prefix, config, URL and the retrier that classifies this backend's errors."""
        self.prefix = prefix.strip("/")
        self.config = config
        self.url = f"{scheme}://{bucket}/{self.prefix}" if self.prefix else f"{scheme}://{bucket}"
        self.retrier = Retrier.from_config(self._classify, config)

    def _classify(self, exc: Exception, what: str) -> Failure | None:
        raise NotImplementedError

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _key_prefix(self, prefix: str = "") -> str:
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    def _name(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return self.retrier.call(what, fn)
