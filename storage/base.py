"""The Storage seam: where encrypted objects live.

Contract (every backend, tested by one shared suite in tests/storage/):
- Storage only ever sees ciphertext and small JSON documents; it knows nothing
  about keys or PostgreSQL.
- ``open_write(name)`` returns an ObjectWriter.  Nothing is visible under
  ``name`` until ``commit()`` returns, and then the whole object is durable
  (fsynced, or acknowledged by the object store).  ``abort()`` discards the
  upload and is safe to call at any time, also after a failure.
- ``put_if_absent(name, data)`` creates a small object only if the name is
  free, atomically and durably like ``put_bytes``; a taken name raises
  ObjectExists and the existing object is kept.  Of concurrent writers exactly
  one wins (locks and leases are built on this).
- ``open_read`` streams an object; ``list(prefix)`` yields only committed
  objects, reads only what is under the prefix (which may end in a partial
  name) and pages through any number of them; ``delete`` of a missing object
  is not an error.
- Interrupted uploads (a crashed process) are found by ``list_incomplete()``
  and removed by ``remove_incomplete()``.
- Errors are StorageError subclasses with operator messages; ObjectNotFound
  for missing objects, ObjectExists for a taken name, ObjectLocked for objects
  under retention.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    modified: datetime | None = None


@dataclass(frozen=True)
class IncompleteUpload:
    """An upload that was started and never committed nor aborted."""

    name: str
    started: datetime | None
    handle: str


class ObjectWriter(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...

    def commit(self) -> None:
        """Make the object durable and visible; after this it is complete."""

    def abort(self) -> None:
        """Discard everything written; idempotent."""


class Storage(Protocol):
    url: str

    def open_write(self, name: str) -> ObjectWriter: ...

    def open_read(self, name: str) -> BinaryIO: ...

    def put_bytes(self, name: str, data: bytes) -> None:
        """Write a small object atomically and durably (manifests, key objects)."""

    def put_if_absent(self, name: str, data: bytes) -> None:
        """Like put_bytes, but never overwrites: ObjectExists if ``name`` exists."""

    def get_bytes(self, name: str) -> bytes: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, name: str) -> None: ...

    def exists(self, name: str) -> bool: ...

    def list_incomplete(self) -> builtins.list[IncompleteUpload]: ...

    def remove_incomplete(self, upload: IncompleteUpload) -> None: ...

    def close(self) -> None: ...


def check_name(name: str) -> str:
    """Object names are relative, '/'-separated, without '..' or empty parts."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object name {name!r}")
    return name
