"""A WAL file as one encrypted object (docs/format.md, "WAL archive").

The object is a v1 stream (ebk.format.stream) whose plaintext is a small
record followed by the WAL bytes:

    record = "EBKW" | version u8 (=1) | flags u8 (bit 0: body is one zstd frame)
             | reserved u16 (=0) | size u64be (WAL bytes) | digest[32]
    digest = HMAC-SHA-256(HKDF-SHA-256(WAL data key, info="ebk/wal/digest/v1"), WAL bytes)

The stream's associated data binds the object to its repository, timeline and
file name (``wal_context``), so a renamed or swapped object fails on its first
chunk.  The digest sits inside the authenticated plaintext: a re-push compares
it with the file at hand (same bytes: success; other bytes: refused) without
trusting anything the bucket says outside the stream.  Everything here is
in memory: a WAL file is at most 1 GiB (PostgreSQL's largest segment size)
and usually 16 MiB.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import struct
from dataclasses import dataclass

import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ebk.errors import IntegrityError
from ebk.format.stream import COMPRESSION_NONE, DecryptingReader, EncryptingWriter, read_header

RECORD_MAGIC = b"EBKW"
RECORD_VERSION = 1
FLAG_ZSTD = 0x01
_RECORD = struct.Struct(">4sBBHQ32s")
RECORD_SIZE = _RECORD.size
MAX_WAL_FILE_SIZE = 1024 * 1024 * 1024  # PostgreSQL's largest wal_segment_size

# What PostgreSQL archives: segments, partial segments, timeline history and
# backup history files.  Nothing else is ever accepted as a WAL file name.
SEGMENT = re.compile(r"^[0-9A-F]{24}$")
PARTIAL = re.compile(r"^[0-9A-F]{24}\.partial$")
HISTORY = re.compile(r"^[0-9A-F]{8}\.history$")
BACKUP_LABEL = re.compile(r"^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$")
# ebk's own: the first OOOOOOOO (hex) bytes of a segment the daemon is still
# streaming (wal.mode = "stream"); never a PostgreSQL archive name.
STREAM_PARTIAL = re.compile(r"^([0-9A-F]{24})\.([0-9A-F]{8})\.stream$")


def is_wal_name(name: str) -> bool:
    return any(p.match(name) for p in (SEGMENT, PARTIAL, HISTORY, BACKUP_LABEL))


def timeline_of(name: str) -> str:
    """The 8 hex digits of the timeline every WAL file name starts with."""
    if not (is_wal_name(name) or STREAM_PARTIAL.match(name)):
        raise ValueError(f"{name!r} is not a WAL file name")
    return name[:8]


def wal_context(repository_id: str, name: str) -> bytes:
    """Associated data of a WAL object: its repository, timeline and file name."""
    return f"ebk/wal/v1/{repository_id}/{timeline_of(name)}/{name}".encode()


def digest_key(data_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ebk/wal/digest/v1").derive(
        data_key
    )


def wal_digest(data_key: bytes, wal: bytes | memoryview) -> bytes:
    return hmac.new(digest_key(data_key), wal, hashlib.sha256).digest()


@dataclass(frozen=True)
class WalFile:
    """An authenticated WAL file: its bytes and the digest stored with them."""

    data: bytes
    digest: bytes
    key_id: str


def seal_wal(
    wal: bytes, data_key: bytes, *, key_id: str, repository_id: str, name: str, level: int
) -> bytes:
    """The stored object for WAL file ``name`` (the whole object, in memory)."""
    if len(wal) > MAX_WAL_FILE_SIZE:
        raise ValueError(f"{name} is larger than any WAL file ({len(wal)} bytes)")
    flags = 0
    body: bytes | memoryview = wal
    if level > 0:
        body = zstandard.ZstdCompressor(level=level).compress(wal)
        flags |= FLAG_ZSTD
    record = _RECORD.pack(
        RECORD_MAGIC, RECORD_VERSION, flags, 0, len(wal), wal_digest(data_key, wal)
    )
    out = io.BytesIO()
    writer = EncryptingWriter(
        out,
        data_key,
        key_id=key_id,
        associated_data=wal_context(repository_id, name),
        compression=COMPRESSION_NONE,
    )
    writer.write(record)
    writer.write(body)
    writer.close()
    return out.getvalue()


def object_key_id(sealed: bytes) -> str:
    """The key id the stream header names (unauthenticated until it decrypts)."""
    header, _ = read_header(io.BytesIO(sealed))
    return header.key_id


def open_wal(sealed: bytes, data_key: bytes, *, repository_id: str, name: str) -> WalFile:
    """Authenticate and decrypt a whole WAL object; IntegrityError on any doubt."""
    source = io.BytesIO(sealed)
    reader = DecryptingReader(source, data_key, associated_data=wal_context(repository_id, name))
    plain = reader.read()  # every chunk authenticated, the final one included
    if len(plain) < RECORD_SIZE:
        raise IntegrityError(f"WAL object {name} is malformed: shorter than its record")
    magic, version, flags, reserved, size, digest = _RECORD.unpack_from(plain)
    if magic != RECORD_MAGIC or version != RECORD_VERSION or reserved or flags & ~FLAG_ZSTD:
        raise IntegrityError(f"WAL object {name} has an unknown record (version {version})")
    body = memoryview(plain)[RECORD_SIZE:]
    if flags & FLAG_ZSTD:
        try:
            data = zstandard.ZstdDecompressor().decompress(body, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"WAL object {name} decrypted but did not decompress") from exc
    else:
        data = bytes(body)
    if len(data) != size or not hmac.compare_digest(wal_digest(data_key, data), digest):
        raise IntegrityError(f"WAL object {name} decrypted to bytes that do not match its digest")
    return WalFile(data, digest, reader.header.key_id)
