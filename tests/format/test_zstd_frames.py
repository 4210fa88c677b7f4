"""The zstd frame tracker agrees with zstd itself about where frames end.

Real frames from the zstd library (levels, checksums, content sizes, several
frames, skippable frames), cut at every position and fed in seeded random
pieces: the tracker says "complete" exactly at frame ends.
"""

from __future__ import annotations

import random

import pytest
import zstandard

from ebk.errors import IntegrityError
from ebk.format.zstdframes import ZstdFrameTracker

SKIPPABLE = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"skip!"


def _frames(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    frames = []
    for _ in range(rng.randint(1, 3)):
        size = rng.choice([0, 1, 100, 5000, 140_000])
        data = bytes(rng.getrandbits(8) % rng.choice([2, 16, 256]) for _ in range(size))
        cctx = zstandard.ZstdCompressor(
            level=rng.choice([1, 3, 19]),
            write_checksum=rng.random() < 0.5,
            write_content_size=rng.random() < 0.5,
        )
        frames.append(cctx.compress(data) if rng.random() < 0.5 else _streamed(cctx, data))
        if rng.random() < 0.3:
            frames.append(SKIPPABLE)
    return frames


def _streamed(cctx: zstandard.ZstdCompressor, data: bytes) -> bytes:
    """A frame written in streaming mode (no content size), as PostgreSQL writes them."""
    chunks = [data[i : i + 7000] for i in range(0, len(data), 7000)]
    obj = cctx.compressobj()
    return b"".join(obj.compress(c) for c in chunks) + obj.flush()


def _feed(data: bytes, rng: random.Random) -> ZstdFrameTracker:
    tracker = ZstdFrameTracker()
    i = 0
    while i < len(data):
        step = rng.choice([1, 2, 3, 5, 64, 4096, 1 << 20])
        tracker.feed(data[i : i + step])
        i += step
    return tracker


@pytest.mark.parametrize("seed", range(12))
def test_complete_exactly_at_frame_ends(seed: int) -> None:
    frames = _frames(seed)
    data = b"".join(frames)
    ends = {0}
    total = 0
    for frame in frames:
        total += len(frame)
        ends.add(total)
    rng = random.Random(seed)
    tracker = _feed(data, rng)
    assert tracker.at_frame_boundary()
    cuts = set(rng.sample(range(len(data)), min(len(data), 150))) | {1, len(data) - 1} | ends
    for cut in sorted(c for c in cuts if 0 <= c <= len(data)):
        assert _feed(data[:cut], rng).at_frame_boundary() == (cut in ends), cut


@pytest.mark.parametrize(
    "data",
    [
        b"not zstd",
        (0xFD2FB528).to_bytes(4, "little") + b"\x08",
        b"\x28\xb5\x2f\xfd\x20\x05\x07\x00\x00",
    ],
    ids=["bad-magic", "reserved-header-bit", "reserved-block-type"],
)
def test_structural_garbage_is_an_integrity_error(data: bytes) -> None:
    with pytest.raises(IntegrityError, match="not valid zstd"):
        ZstdFrameTracker().feed(data)
