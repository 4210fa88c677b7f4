"""Stream format v1: chunked, authenticated AES-256-GCM (the STREAM construction).

This module knows a data key, a file-like destination or source, and nothing
about PostgreSQL, storage or key management.  docs/format.md is the
specification; the constants and layout below follow it exactly.

    header  = magic "EBKS" | version u8 (=1) | algorithm u8 (=1) | compression u8
              | reserved u8 (=0) | chunk_size u32be | key_id_len u8 | key_id | salt[32]
    subkey  = HKDF-SHA-256(ikm = data key, salt = salt,
                           info = "ebk/stream/v1" | u32be(len(header)) | header
                                  | u32be(len(ad)) | ad, length = 32)
    nonce_i = u88be(i) | flag u8 (0x01 on the final chunk, else 0x00)
    chunk_i = AES-256-GCM(subkey, nonce_i, plaintext_i, aad = "")

Every non-final chunk holds exactly chunk_size plaintext bytes; the final chunk
holds 0..chunk_size bytes and is empty only when it is the first chunk.
Deriving the subkey from the whole header and the caller's associated data
authenticates both: a changed header, or a stream moved to another backup or
object name, fails on its first chunk.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ebk.errors import IntegrityError

MAGIC = b"EBKS"
VERSION = 1
ALG_AES256GCM_HKDF_STREAM = 1
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
SALT_SIZE = 32
KEY_SIZE = 32
TAG_SIZE = 16
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_KEY_ID_SIZE = 64
# 1 MiB, measured with bench/chunk_size.py (docs/performance.md): 64 KiB,
# 256 KiB and 1 MiB run at the same speed (~4.2 GB/s encrypt+decrypt here),
# 4 MiB is 5x slower (fresh page faults per chunk); 1 MiB has the fewest
# chunks per object among the fast sizes and keeps the decoder at ~2 MiB.
DEFAULT_CHUNK_SIZE = 1024 * 1024
_FIXED_HEADER = struct.Struct(">4sBBBBIB")
_MAX_COUNTER = (1 << 88) - 1
_INFO_LABEL = b"ebk/stream/v1"


class Writable(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class StreamHeader:
    """The parsed, not yet authenticated header of a stream."""

    compression: int
    chunk_size: int
    key_id: str
    salt: bytes

    def encode(self) -> bytes:
        key_id = self.key_id.encode("ascii")
        fixed = _FIXED_HEADER.pack(
            MAGIC,
            VERSION,
            ALG_AES256GCM_HKDF_STREAM,
            self.compression,
            0,
            self.chunk_size,
            len(key_id),
        )
        return fixed + key_id + self.salt


def _validate_key_id(key_id: str) -> None:
    if not key_id or len(key_id) > MAX_KEY_ID_SIZE or not key_id.isascii():
        raise ValueError("key id must be 1..64 ASCII characters")
    if not key_id.isprintable() or " " in key_id:
        raise ValueError("key id must be printable ASCII without spaces")


def derive_subkey(data_key: bytes, header: bytes, salt: bytes, associated_data: bytes) -> bytes:
    """Derive the per-stream AES key; binds the header and the caller's context."""
    if len(data_key) != KEY_SIZE:
        raise ValueError("data key must be 32 bytes")
    info = (
        _INFO_LABEL
        + struct.pack(">I", len(header))
        + header
        + struct.pack(">I", len(associated_data))
        + associated_data
    )
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(data_key)


def chunk_nonce(counter: int, final: bool) -> bytes:
    if counter > _MAX_COUNTER:
        raise OverflowError("stream too long: chunk counter exhausted")
    return counter.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


class EncryptingWriter:
    """Encrypts what is written to it into ``dest`` as a v1 stream.

    ``close()`` writes the final chunk and does not close ``dest``: the caller
    owns the destination and decides when it is durable.  The writer keeps one
    chunk of plaintext in memory.
    """

    def __init__(
        self,
        dest: Writable,
        data_key: bytes,
        *,
        key_id: str,
        associated_data: bytes,
        compression: int = COMPRESSION_NONE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        salt: bytes | None = None,
    ) -> None:
        _validate_key_id(key_id)
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
        if compression not in (COMPRESSION_NONE, COMPRESSION_ZSTD):
            raise ValueError(f"unknown compression {compression}")
        salt = os.urandom(SALT_SIZE) if salt is None else salt
        if len(salt) != SALT_SIZE:
            raise ValueError("salt must be 32 bytes")
        self.header = StreamHeader(compression, chunk_size, key_id, salt)
        encoded = self.header.encode()
        self._aead = AESGCM(derive_subkey(data_key, encoded, salt, associated_data))
        self._dest = dest
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False
        self.bytes_in = 0
        self.bytes_out = len(encoded)
        dest.write(encoded)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed stream")
        view = memoryview(data)
        size = len(view)
        self.bytes_in += size
        cs = self._chunk_size
        # A full buffer is only flushed once more data proves it is not final.
        while len(view):
            if len(self._buffer) == cs:
                self._emit(bytes(self._buffer), final=False)
                self._buffer.clear()
            if not self._buffer and len(view) > cs:
                self._emit(view[:cs], final=False)
                view = view[cs:]
                continue
            take = min(cs - len(self._buffer), len(view))
            self._buffer += view[:take]
            view = view[take:]
        return size

    def _emit(self, plaintext: bytes | memoryview, *, final: bool) -> None:
        sealed = self._aead.encrypt(chunk_nonce(self._counter, final), plaintext, None)
        self._counter += 1
        self.bytes_out += len(sealed)
        self._dest.write(sealed)

    def close(self) -> None:
        if self._closed:
            return
        self._emit(bytes(self._buffer), final=True)
        self._buffer.clear()
        self._closed = True

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def _read_exact(source: Readable, size: int) -> bytes:
    parts = []
    remaining = size
    while remaining:
        part = source.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def read_header(source: Readable) -> tuple[StreamHeader, bytes]:
    """Parse a header; nothing in it is trusted until the first chunk authenticates."""
    fixed = _read_exact(source, _FIXED_HEADER.size)
    if len(fixed) < _FIXED_HEADER.size:
        raise IntegrityError(
            "not an ebk stream: the object is shorter than a stream header",
            hint="the object is truncated or is not an ebk backup object",
        )
    magic, version, algorithm, compression, reserved, chunk_size, key_id_len = _FIXED_HEADER.unpack(
        fixed
    )
    if magic != MAGIC:
        raise IntegrityError("not an ebk stream: bad magic bytes")
    if version != VERSION:
        raise IntegrityError(
            f"unsupported ebk stream version {version} (this ebk reads version {VERSION})",
            hint="upgrade ebk to a release that reads this format version",
        )
    if algorithm != ALG_AES256GCM_HKDF_STREAM or reserved != 0:
        raise IntegrityError(f"unsupported stream algorithm {algorithm} or reserved byte set")
    if compression not in (COMPRESSION_NONE, COMPRESSION_ZSTD):
        raise IntegrityError(f"unsupported stream compression {compression}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(f"stream header declares an invalid chunk size {chunk_size}")
    if not 1 <= key_id_len <= MAX_KEY_ID_SIZE:
        raise IntegrityError("stream header declares an invalid key id length")
    rest = _read_exact(source, key_id_len + SALT_SIZE)
    if len(rest) < key_id_len + SALT_SIZE:
        raise IntegrityError("ebk stream is truncated inside its header")
    # Printable ASCII without space, as written: the unauthenticated key id may
    # reach an error message, so control characters must never get that far.
    if any(not 0x21 <= b <= 0x7E for b in rest[:key_id_len]):
        raise IntegrityError("stream header holds a key id that is not printable ASCII")
    key_id = rest[:key_id_len].decode("ascii")
    header = StreamHeader(compression, chunk_size, key_id, rest[key_id_len:])
    return header, fixed + rest


class DecryptingReader:
    """Reads and authenticates a v1 stream; ``read()`` only returns verified bytes.

    Holds at most two sealed chunks in memory.  Truncation, reordering,
    duplication, trailing data and any flipped bit raise IntegrityError; once
    raised, every later call raises it again.
    """

    def __init__(self, source: Readable, data_key: bytes, *, associated_data: bytes) -> None:
        self.header, encoded = read_header(source)
        self._aead = AESGCM(derive_subkey(data_key, encoded, self.header.salt, associated_data))
        self._source = source
        self._sealed_size = self.header.chunk_size + TAG_SIZE
        self._counter = 0
        self._pending = _read_exact(source, self._sealed_size)
        self._plain = memoryview(b"")
        self._done = False
        self._trailing_checked = False
        self._error: IntegrityError | None = None

    def _next_chunk(self) -> bytes:
        sealed = self._pending
        if len(sealed) < TAG_SIZE:
            raise IntegrityError(
                "backup object is truncated: it ends before its final chunk",
                hint="the upload was interrupted or the object was cut; use another backup",
            )
        final = len(sealed) < self._sealed_size
        if not final:
            self._pending = _read_exact(self._source, self._sealed_size)
            final = not self._pending
        try:
            plain = self._aead.decrypt(chunk_nonce(self._counter, final), sealed, None)
        except InvalidTag:
            raise self._explain_failure(sealed, final) from None
        if final:
            if not plain and self._counter != 0:
                raise IntegrityError("backup object is malformed: empty final chunk")
            self._done = True
        self._counter += 1
        return plain

    def _explain_failure(self, sealed: bytes, final: bool) -> IntegrityError:
        if final:
            try:
                self._aead.decrypt(chunk_nonce(self._counter, False), sealed, None)
            except InvalidTag:
                pass
            else:
                return IntegrityError(
                    "backup object is truncated: it ends without its final chunk",
                    hint="the upload was interrupted or the object was cut; use another backup",
                )
        if self._counter == 0:
            return IntegrityError(
                "backup object failed authentication at its first chunk: wrong data key, "
                "a modified header, or an object that belongs to another backup",
                hint="check that the key object and data object come from the same backup",
            )
        return IntegrityError(
            f"backup object failed authentication at chunk {self._counter}: "
            "the data was modified, reordered or corrupted",
            hint="the stored bytes are damaged; restore from another backup",
        )

    def read(self, size: int = -1) -> bytes:
        if self._error is not None:
            raise self._error
        try:
            return self._read(size)
        except IntegrityError as exc:
            self._error = exc
            raise

    def _read(self, size: int) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            if not self._plain:
                if self._done:
                    break
                self._plain = memoryview(self._next_chunk())
                continue
            take = len(self._plain) if size < 0 else min(size - len(out), len(self._plain))
            out += self._plain[:take]
            self._plain = self._plain[take:]
        if self._done and not self._plain and not self._trailing_checked:
            self._trailing_checked = True
            if self._source.read(1):
                raise IntegrityError("backup object has data after its final chunk")
        return bytes(out)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True
