"""Follow the frame structure of zstd data (RFC 8878) to tell where frames end.

python-zstandard's streaming reader returns end-of-data when its source ends
inside a frame, so a stream whose authenticated plaintext was cut inside a
frame would decompress "successfully" to a prefix.  This tracker reads only
the frame and block headers of the bytes that pass by (block contents are
skipped by length), so it costs next to nothing; at the end of the stream
``at_frame_boundary()`` says whether the last frame was complete.  The
decompressor still validates everything inside the blocks.
"""

from __future__ import annotations

from ebk.errors import IntegrityError

ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50
_DICT_ID_SIZE = (0, 1, 2, 4)
_BLOCK_RAW, _BLOCK_RLE, _BLOCK_COMPRESSED = 0, 1, 2

# What the next fixed-size field is.
_MAGIC, _SKIPPABLE_SIZE, _FRAME_HEADER, _BLOCK_HEADER = range(4)
_FIELD_SIZE = {_MAGIC: 4, _SKIPPABLE_SIZE: 4, _FRAME_HEADER: 1, _BLOCK_HEADER: 3}


class ZstdFrameTracker:
    """Feed it every byte of the zstd data, in order; ask it at the end."""

    def __init__(self) -> None:
        self._field = _MAGIC
        self._acc = bytearray()
        self._skip = 0
        self._checksum = False
        self.frames = 0

    def at_frame_boundary(self) -> bool:
        """True when every frame seen so far is complete (also for no data at all)."""
        return self._field == _MAGIC and not self._acc and self._skip == 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        i, n = 0, len(view)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
                continue
            need = _FIELD_SIZE[self._field] - len(self._acc)
            piece = view[i : i + need]
            self._acc += piece
            i += len(piece)
            if len(self._acc) == _FIELD_SIZE[self._field]:
                value = int.from_bytes(self._acc, "little")
                self._acc.clear()
                self._on_field(value)

    def _on_field(self, value: int) -> None:
        if self._field == _MAGIC:
            if value == ZSTD_MAGIC:
                self._field = _FRAME_HEADER
            elif value & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                self._field = _SKIPPABLE_SIZE
            else:
                raise _invalid(f"no zstd frame starts here (magic {value:08x})")
        elif self._field == _SKIPPABLE_SIZE:
            self._skip = value
            self._field = _MAGIC
        elif self._field == _FRAME_HEADER:
            if value & 0x08:
                raise _invalid("reserved bit set in a zstd frame header")
            fcs_flag, single_segment = value >> 6, (value >> 5) & 1
            fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
            self._checksum = bool(value & 0x04)
            self._skip = (0 if single_segment else 1) + _DICT_ID_SIZE[value & 0x03] + fcs_size
            self._field = _BLOCK_HEADER
        else:
            last, block_type, size = value & 1, (value >> 1) & 3, value >> 3
            if block_type not in (_BLOCK_RAW, _BLOCK_RLE, _BLOCK_COMPRESSED):
                raise _invalid("reserved zstd block type")
            self._skip = 1 if block_type == _BLOCK_RLE else size
            if last:
                self._skip += 4 if self._checksum else 0
                self.frames += 1
                self._field = _MAGIC


def _invalid(what: str) -> IntegrityError:
    return IntegrityError(
        f"backup object decrypted but is not valid zstd data: {what}",
        hint="the object was written by a faulty writer; restore from another backup",
    )
