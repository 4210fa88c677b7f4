"""What the object-store backends (S3, GCS, Azure) share: names under the
repository URL's prefix, and every call through the retrier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from ebk.config import StorageConfig
from ebk.errors import ObjectExists, StorageError
from ebk.storage.base import check_name
from ebk.storage.retry import Failure, Retrier

log = structlog.get_logger("ebk.storage")


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

    def get_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def exists_error(self, name: str) -> ObjectExists:
        return ObjectExists(
            f"{self.url}/{name} already exists; it was not overwritten",
            hint="another writer created it first; read it, or use a new name",
        )

    def _create(self, name: str, data: bytes, put: Callable[[], Any]) -> None:
        """Run one conditional create through the retrier.

        ``put`` raises ObjectExists when the store refuses because the name is
        taken (never retried).  When an earlier attempt failed transiently (a
        lost answer) its write may have landed, so a later refusal can be our
        own object: if the stored bytes equal ``data`` it is reported as
        success.  Two writers of identical bytes are then indistinguishable;
        callers that must tell them apart (locks) put a unique token in
        ``data``.  Without a transient failure a refusal is always a conflict.
        """
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            put()

        try:
            self._call(f"create {name}", attempt)
        except ObjectExists:
            if attempts > 1 and self._holds(name, data):
                log.info("a retried create found its own earlier write", object=name)
                return
            raise

    def _holds(self, name: str, data: bytes) -> bool:
        try:
            return self.get_bytes(name) == data
        except StorageError:
            return False
