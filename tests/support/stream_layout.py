"""Cutting stored objects apart along the stream-v1 layout (docs/format.md), for tampering.

Written from the specification, not from ebk.format.stream, so that a test
that damages "chunk 2" damages what the format calls chunk 2.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

TAG = 16


@dataclass
class Stored:
    header: bytes
    chunks: list[bytes]
    chunk_size: int

    @classmethod
    def read(cls, path: Path) -> Stored:
        data = path.read_bytes()
        chunk_size, key_id_len = struct.unpack(">IB", data[8:13])
        header_len = 13 + key_id_len + 32
        body = data[header_len:]
        sealed = chunk_size + TAG
        chunks = [body[i : i + sealed] for i in range(0, len(body), sealed)]
        return cls(data[:header_len], chunks, chunk_size)

    def write(self, path: Path) -> None:
        path.write_bytes(self.header + b"".join(self.chunks))

    @property
    def salt_offset(self) -> int:
        return len(self.header) - 32

    @property
    def size(self) -> int:
        return len(self.header) + sum(len(c) for c in self.chunks)

    def chunk_offset(self, index: int) -> int:
        return len(self.header) + index * (self.chunk_size + TAG)


def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))
