"""A backup object's payload: zstd compression inside the v1 encrypted stream.

Compression happens before encryption (ciphertext does not compress), and the
stream header records it, so a reader needs nothing but the data key.
"""

from __future__ import annotations

import hashlib
from typing import IO, cast

import zstandard

from ebk.errors import IntegrityError
from ebk.format.stream import (
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    DEFAULT_CHUNK_SIZE,
    DecryptingReader,
    EncryptingWriter,
    Readable,
    Writable,
)
from ebk.format.zstdframes import ZstdFrameTracker


class HashingWriter:
    """Counts and hashes (SHA-256) what passes through to ``dest``."""

    def __init__(self, dest: Writable) -> None:
        self._dest = dest
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._dest.write(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class PayloadWriter:
    """Compress (zstd, ``level`` 0 = off) and encrypt into ``dest``.

    ``close()`` finishes the compressed frame and the final chunk; it does not
    close ``dest``.  ``precompressed``: what is written is already zstd frames
    (PostgreSQL's server-side compression); they are encrypted as they are and
    the header says zstd, so readers need not know who compressed.
    ``threads`` > 0 lets zstd compress on worker threads that run outside the
    GIL, so compression overlaps with reading and encryption.
    """

    def __init__(
        self,
        dest: Writable,
        data_key: bytes,
        *,
        key_id: str,
        associated_data: bytes,
        level: int,
        threads: int = 0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        precompressed: bool = False,
    ) -> None:
        self.encryptor = EncryptingWriter(
            dest,
            data_key,
            key_id=key_id,
            associated_data=associated_data,
            compression=COMPRESSION_ZSTD if level > 0 or precompressed else COMPRESSION_NONE,
            chunk_size=chunk_size,
        )
        self._compressor: zstandard.ZstdCompressionWriter | None = None
        if level > 0 and not precompressed:
            cctx = zstandard.ZstdCompressor(level=level, threads=threads)
            self._compressor = cctx.stream_writer(
                cast(IO[bytes], self.encryptor), closefd=False, write_return_read=True
            )
        self.bytes_in = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.bytes_in += len(data)
        if self._compressor is not None:
            self._compressor.write(data)
        else:
            self.encryptor.write(data)
        return len(data)

    def close(self) -> None:
        if self._compressor is not None:
            self._compressor.flush(zstandard.FLUSH_FRAME)
        self.encryptor.close()


class _FramedSource:
    """The decrypted stream on its way into the decompressor: counted, frames followed.

    At the end of the stream the last zstd frame must be complete; a stream
    that ends inside one is rejected (docs/format.md, "Compression").
    """

    def __init__(self, source: DecryptingReader) -> None:
        self._source = source
        self._frames = ZstdFrameTracker()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if data:
            self.size += len(data)
            self._frames.feed(data)
        elif not self._frames.at_frame_boundary():
            raise IntegrityError(
                "backup object decrypted but its zstd data ends inside an incomplete frame "
                "(the object was written truncated)",
                hint="restore from another backup",
            )
        return data

    def readable(self) -> bool:
        return True


class PayloadReader:
    """Authenticate, decrypt and decompress a payload; ``read()`` returns plaintext.

    ``stream_size`` counts the decrypted stream plaintext (before decompression).
    """

    def __init__(self, source: Readable, data_key: bytes, *, associated_data: bytes) -> None:
        self.decryptor = DecryptingReader(source, data_key, associated_data=associated_data)
        self.key_id = self.decryptor.header.key_id
        self._reader: Readable
        self._framed: _FramedSource | None = None
        if self.decryptor.header.compression == COMPRESSION_ZSTD:
            self._framed = _FramedSource(self.decryptor)
            dctx = zstandard.ZstdDecompressor()
            self._reader = dctx.stream_reader(
                cast(IO[bytes], self._framed), read_across_frames=True, closefd=False
            )
        else:
            self._reader = self.decryptor
        self._payload_size = 0

    @property
    def stream_size(self) -> int:
        return self._framed.size if self._framed is not None else self._payload_size

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._reader.read(size)
        except zstandard.ZstdError as exc:
            # Authenticated bytes that do not decompress mean a writer bug, not tampering.
            raise IntegrityError(f"backup object decrypted but did not decompress: {exc}") from exc
        self._payload_size += len(data)
        return data

    def readable(self) -> bool:
        return True
