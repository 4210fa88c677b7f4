"""Read one stored object back: hash the ciphertext, authenticate, decrypt, decompress."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from ebk.errors import IntegrityError, ObjectNotFound
from ebk.format.payload import PayloadReader
from ebk.format.stream import Readable
from ebk.manifest import Manifest, StoredObject
from ebk.repository.layout import stream_context
from ebk.restore.session import OpenedBackup


class HashingReader:
    """Hashes and counts the stored bytes as the decryptor pulls them."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class ObjectReader:
    """Plaintext of one object; ``finish()`` drains it and checks size and SHA-256."""

    def __init__(
        self, source: BinaryIO, stored: StoredObject, manifest: Manifest, dek: bytes
    ) -> None:
        self.stored = stored
        self._hashing = HashingReader(source)
        try:
            self._payload = PayloadReader(
                self._hashing, dek, associated_data=stream_context(manifest.backup_id, stored.name)
            )
        except IntegrityError as exc:
            raise self._named(exc) from None
        # The header is not authenticated yet: a mismatch is damage or an object
        # copied from another backup (integrity), never a key problem.
        if self._payload.key_id != manifest.dek_id:
            raise IntegrityError(
                f"object {stored.name} names data key {self._payload.key_id}, "
                f"but backup {manifest.backup_id} uses {manifest.dek_id}",
                hint="the object was modified or copied in from another backup; "
                "restore from another backup",
            )
        self.plain_bytes = 0

    def _named(self, exc: IntegrityError) -> IntegrityError:
        """The stream layer knows no object names; the operator needs one."""
        return IntegrityError(f"object {self.stored.name}: {exc.message}", hint=exc.hint)

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._payload.read(size)
        except IntegrityError as exc:
            raise self._named(exc) from None
        self.plain_bytes += len(data)
        return data

    def finish(self) -> None:
        while self.read(1024 * 1024):
            pass
        if self._hashing.size != self.stored.stored_size or (
            self._hashing.hexdigest() != self.stored.sha256
        ):
            raise IntegrityError(
                f"object {self.stored.name} does not match its manifest entry "
                f"({self._hashing.size} bytes read, {self.stored.stored_size} expected)",
                hint="the stored object was replaced or damaged; restore from another backup",
            )
        # plain_size is the size before ebk's own compression (docs/format.md): the
        # payload, or for archives PostgreSQL compressed, the zstd data as received.
        if self.stored.plain_size not in (self.plain_bytes, self._payload.stream_size):
            raise IntegrityError(
                f"object {self.stored.name} decrypted to {self.plain_bytes} bytes "
                f"({self._payload.stream_size} before decompression), but its manifest entry "
                f"says {self.stored.plain_size}",
                hint="the backup was written by a faulty writer; restore from another backup",
            )


@contextmanager
def open_object(backup: OpenedBackup, stored: StoredObject) -> Iterator[ObjectReader]:
    try:
        source = backup.repo.open_object_reader(backup.backup_id, stored.name)
    except ObjectNotFound:
        raise IntegrityError(
            f"object {stored.name} of backup {backup.backup_id} is listed in its manifest but "
            "missing from the repository",
            hint="the backup was damaged (deleted objects); restore from another backup",
        ) from None
    try:
        yield ObjectReader(source, stored, backup.manifest, backup.dek)
    finally:
        source.close()
