"""Round trips and hostile edits of the stream layer, around chunk boundaries.

hypothesis is not a dependency of ebk, so the cases are parametrised with a
seeded PRNG: deterministic, and still far from hand-picked.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import pytest

from ebk.errors import IntegrityError
from ebk.format.payload import PayloadReader, PayloadWriter
from ebk.format.stream import (
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    DecryptingReader,
    EncryptingWriter,
)

KEY = bytes(range(32))
AD = b"ebk/20250101T000000Z-abcdef/base.tar.ebk"
KEY_ID = "dek-0123456789abcdef"
HEADER_LEN = 13 + len(KEY_ID) + SALT_SIZE


def _sizes(cs: int) -> list[int]:
    edges = {0, 1, cs - 1, cs, cs + 1, 2 * cs - 1, 2 * cs, 2 * cs + 1, 3 * cs + 17, 5 * cs}
    rng = random.Random(cs)
    return sorted(edges | {rng.randrange(0, 6 * cs) for _ in range(12)})


CASES = [(cs, size) for cs in (1024, 4096) for size in _sizes(cs)]


def _pieces(data: bytes, rng: random.Random, top: int) -> Iterator[bytes]:
    i = 0
    while i < len(data):
        n = rng.randint(1, top)
        yield data[i : i + n]
        i += n


def encrypt(plaintext: bytes, cs: int, rng: random.Random | None = None) -> bytes:
    out = io.BytesIO()
    writer = EncryptingWriter(out, KEY, key_id=KEY_ID, associated_data=AD, chunk_size=cs)
    for piece in _pieces(plaintext, rng or random.Random(0), 3 * cs):
        writer.write(piece)
    writer.close()
    return out.getvalue()


def decrypt(stream: bytes, read_size: int = -1) -> bytes:
    reader = DecryptingReader(io.BytesIO(stream), KEY, associated_data=AD)
    out = bytearray()
    while part := reader.read(read_size):
        out += part
    return bytes(out)


@pytest.mark.parametrize(("cs", "size"), CASES)
def test_round_trip_and_exact_length(cs: int, size: int) -> None:
    rng = random.Random(size * 7919 + cs)
    plaintext = rng.randbytes(size)
    stream = encrypt(plaintext, cs, rng)
    chunks = max(1, -(-size // cs))  # the final chunk is empty only for empty input
    assert len(stream) == HEADER_LEN + size + chunks * TAG_SIZE
    for read_size in (-1, 1, rng.randint(2, 3 * cs)):
        assert decrypt(stream, read_size) == plaintext


@pytest.mark.parametrize(("cs", "size"), CASES[::3])
def test_fresh_salt_per_stream(cs: int, size: int) -> None:
    plaintext = random.Random(size).randbytes(size)
    a, b = encrypt(plaintext, cs), encrypt(plaintext, cs)
    assert a[HEADER_LEN - SALT_SIZE : HEADER_LEN] != b[HEADER_LEN - SALT_SIZE : HEADER_LEN]
    assert a[HEADER_LEN:] != b[HEADER_LEN:]


@pytest.mark.parametrize("level", [0, 1, 3])
@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 70_000, 300_000])
def test_payload_round_trip(level: int, size: int) -> None:
    rng = random.Random(size + level)
    # half random, half repetitive: exercises both zstd paths
    plaintext = rng.randbytes(size // 2) + b"ebk " * (size // 8) + b"x" * (size % 4)
    out = io.BytesIO()
    writer = PayloadWriter(
        out, KEY, key_id=KEY_ID, associated_data=AD, level=level, chunk_size=MIN_CHUNK_SIZE
    )
    for piece in _pieces(plaintext, rng, 5000):
        writer.write(piece)
    writer.close()
    reader = PayloadReader(io.BytesIO(out.getvalue()), KEY, associated_data=AD)
    got = bytearray()
    while part := reader.read(rng.randint(1, 9000)):
        got += part
    assert bytes(got) == plaintext
    assert reader.decryptor.header.compression == (1 if level else 0)


def test_every_truncation_fails() -> None:
    stream = encrypt(random.Random(1).randbytes(2 * 1024 + 300), 1024)
    for cut in range(len(stream)):
        with pytest.raises(IntegrityError):
            decrypt(stream[:cut])


def test_every_byte_modification_fails() -> None:
    stream = encrypt(random.Random(2).randbytes(2 * 1024 + 300), 1024)
    for offset in range(len(stream)):
        damaged = bytearray(stream)
        damaged[offset] ^= 1 << (offset % 8)
        with pytest.raises(IntegrityError):
            decrypt(bytes(damaged))


def test_only_authenticated_chunks_are_released() -> None:
    """A damaged third chunk: only bytes of the first two chunks come out, then the error.

    A read() that fails mid-way discards what it gathered, so up to one read's
    worth of chunk 1 may be missing; nothing of chunk 2 may appear.
    """
    cs = 1024
    plaintext = random.Random(3).randbytes(4 * cs)
    damaged = bytearray(encrypt(plaintext, cs))
    damaged[HEADER_LEN + 2 * (cs + TAG_SIZE) + 5] ^= 0x40
    reader = DecryptingReader(io.BytesIO(bytes(damaged)), KEY, associated_data=AD)
    released = bytearray()
    with pytest.raises(IntegrityError, match="chunk 2"):
        while part := reader.read(100):
            released += part
    assert bytes(released) == plaintext[: len(released)]
    assert 2 * cs - 100 < len(released) <= 2 * cs


class CountingSource(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.max_request = 0

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None and size >= 0, "the decoder must never read to EOF at once"
        self.max_request = max(self.max_request, size)
        return super().read(size)


def test_decoder_memory_is_bounded() -> None:
    """The decoder reads one sealed chunk at a time and at most one chunk ahead."""
    cs = 4096
    plaintext = random.Random(4).randbytes(40 * cs + 5)
    source = CountingSource(encrypt(plaintext, cs))
    reader = DecryptingReader(source, KEY, associated_data=AD)
    returned = 0
    while part := reader.read(1000):
        returned += len(part)
        consumed = source.tell() - HEADER_LEN
        chunks_needed = -(-returned // cs)
        assert consumed <= (chunks_needed + 1) * (cs + TAG_SIZE)
    assert returned == len(plaintext)
    assert source.max_request <= cs + TAG_SIZE


def test_writer_holds_at_most_one_chunk() -> None:
    cs = 1024
    out = io.BytesIO()
    writer = EncryptingWriter(out, KEY, key_id=KEY_ID, associated_data=AD, chunk_size=cs)
    written = 0
    for piece in _pieces(random.Random(5).randbytes(20 * cs), random.Random(6), 3000):
        writer.write(piece)
        written += len(piece)
        emitted = (len(out.getvalue()) - HEADER_LEN) // (cs + TAG_SIZE) * cs
        assert written - emitted <= cs


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_size": MIN_CHUNK_SIZE - 1},
        {"chunk_size": MAX_CHUNK_SIZE + 1},
        {"key_id": ""},
        {"key_id": "k" * 65},
        {"key_id": "has space"},
        {"key_id": "nöt-ascii"},
        {"salt": b"short"},
        {"compression": 2},
    ],
)
def test_encoder_refuses_invalid_parameters(kwargs: dict[str, object]) -> None:
    params: dict[str, object] = {"key_id": KEY_ID, "associated_data": AD}
    params.update(kwargs)
    with pytest.raises(ValueError):
        EncryptingWriter(io.BytesIO(), KEY, **params)  # type: ignore[arg-type]


def test_encoder_refuses_wrong_key_size_and_late_writes() -> None:
    with pytest.raises(ValueError):
        EncryptingWriter(io.BytesIO(), KEY[:16], key_id=KEY_ID, associated_data=AD)
    writer = EncryptingWriter(io.BytesIO(), KEY, key_id=KEY_ID, associated_data=AD)
    writer.close()
    with pytest.raises(ValueError):
        writer.write(b"late")


def test_unclosed_writer_leaves_a_stream_that_fails() -> None:
    """A producer that dies before close() leaves a stream no reader accepts."""
    out = io.BytesIO()
    with (
        pytest.raises(RuntimeError),
        EncryptingWriter(out, KEY, key_id=KEY_ID, associated_data=AD, chunk_size=1024) as writer,
    ):
        writer.write(b"a" * 5000)
        raise RuntimeError("producer died")
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(out.getvalue())
