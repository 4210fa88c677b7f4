"""Generate the frozen stream-v1 test vectors in tests/vectors/stream-v1/.

    python -m tests.vectors.generate           # print what would be written
    python -m tests.vectors.generate --write   # (re)write the JSON files

Success vectors come from the real encoder with a fixed salt; failure vectors
are valid streams cut, reordered or edited, or hand-sealed with the STREAM
primitives to break one rule at a time.  Once committed the vectors are
frozen: every future ebk must decode them exactly as they say (see
tests/format/test_vectors.py).  Do not regenerate them to make a test pass.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ebk.format.stream import (
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    EncryptingWriter,
    StreamHeader,
    chunk_nonce,
    derive_subkey,
)

OUT_DIR = Path(__file__).resolve().parent / "stream-v1"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(0x80, 0xA0))
SALT = bytes(range(0x40, 0x60))
KEY_ID = "dek-0123456789abcdef"
AD = b"ebk/20250101T000000Z-abcdef/base.tar.ebk"
OTHER_AD = b"ebk/20250101T000000Z-abcdef/dump-0001.ebk"
CS = 1024
TAG = 16
FIXED = struct.Struct(">4sBBBBIB")


def pseudo_random(size: int, label: bytes = b"ebk stream v1 vectors") -> bytes:
    """Deterministic, incompressible plaintext."""
    return hashlib.shake_256(label).digest(size) if size else b""


def words(size: int) -> bytes:
    """Deterministic, compressible text (a few hundred distinct words)."""
    vocab = [hashlib.sha256(str(i).encode()).hexdigest()[: 3 + i % 7] for i in range(300)]
    picks = pseudo_random(size, b"ebk stream v1 words")
    out = bytearray()
    i = 0
    while len(out) < size:
        out += vocab[(picks[i % len(picks)] + 7 * i) % len(vocab)].encode() + b" "
        i += 1
    return bytes(out[:size])


@dataclass
class Vector:
    name: str
    description: str
    expect: str  # success | header failure | payload failure | decompression failure
    stream: bytes
    key: bytes = KEY
    associated_data: bytes = AD
    chunk_size: int = CS
    key_id: str = KEY_ID
    salt: bytes = SALT
    compression: int = COMPRESSION_NONE
    plaintext: bytes | None = None
    payload: bytes | None = None
    from_encoder: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "expect": self.expect,
            "key": self.key.hex(),
            "associated_data": self.associated_data.hex(),
            "chunk_size": self.chunk_size,
            "key_id": self.key_id,
            "salt": self.salt.hex(),
            "compression": "zstd" if self.compression == COMPRESSION_ZSTD else "none",
            "from_encoder": self.from_encoder,
            "stream_sha256": hashlib.sha256(self.stream).hexdigest(),
            "stream": self.stream.hex(),
        }
        if self.plaintext is not None:
            doc["plaintext"] = self.plaintext.hex()
        if self.payload is not None:
            doc["payload"] = self.payload.hex()
        doc.update(self.extra)
        return doc


def encode(
    plaintext: bytes,
    *,
    chunk_size: int = CS,
    key: bytes = KEY,
    ad: bytes = AD,
    key_id: str = KEY_ID,
    compression: int = COMPRESSION_NONE,
) -> bytes:
    """The real encoder, fixed salt; writes in odd pieces to exercise buffering."""
    out = io.BytesIO()
    writer = EncryptingWriter(
        out,
        key,
        key_id=key_id,
        associated_data=ad,
        compression=compression,
        chunk_size=chunk_size,
        salt=SALT,
    )
    for start in range(0, len(plaintext), 333):
        writer.write(plaintext[start : start + 333])
    writer.close()
    return out.getvalue()


def header_len(key_id: str = KEY_ID) -> int:
    return FIXED.size + len(key_id) + 32


def split(stream: bytes, chunk_size: int = CS, key_id: str = KEY_ID) -> tuple[bytes, list[bytes]]:
    """Header and sealed chunks of a well-formed stream."""
    hl = header_len(key_id)
    body = stream[hl:]
    sealed = chunk_size + TAG
    return stream[:hl], [body[i : i + sealed] for i in range(0, len(body), sealed)]


def seal(
    chunks: Sequence[tuple[int, bool, bytes]],
    *,
    chunk_size: int = CS,
    compression: int = COMPRESSION_NONE,
) -> bytes:
    """Hand-sealed stream: (counter, final flag, plaintext) per chunk, in order."""
    header = StreamHeader(compression, chunk_size, KEY_ID, SALT).encode()
    aead = AESGCM(derive_subkey(KEY, header, SALT, AD))
    return header + b"".join(aead.encrypt(chunk_nonce(i, f), p, None) for i, f, p in chunks)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def with_fixed(stream: bytes, **fields: int | bytes) -> bytes:
    """Re-pack the fixed header part with some fields replaced."""
    names = ["magic", "version", "algorithm", "compression", "reserved", "chunk_size", "key_id_len"]
    values = dict(zip(names, FIXED.unpack(stream[: FIXED.size]), strict=True))
    values.update(fields)
    return FIXED.pack(*(values[n] for n in names)) + stream[FIXED.size :]


def success_vectors() -> list[Vector]:
    vectors = []

    def ok(name: str, description: str, size: int, **kw: Any) -> None:
        plaintext = pseudo_random(size)
        stream = encode(plaintext, **kw)
        v = Vector(
            name,
            description,
            "success",
            stream,
            plaintext=plaintext,
            from_encoder=True,
            chunk_size=kw.get("chunk_size", CS),
            key_id=kw.get("key_id", KEY_ID),
            associated_data=kw.get("ad", AD),
        )
        vectors.append(v)

    ok("empty", "empty plaintext: one empty final chunk (16 bytes, the tag)", 0)
    ok("one-byte", "one byte: a single short final chunk", 1)
    ok("chunk-minus-one", "chunk_size - 1 bytes: a single short final chunk", CS - 1)
    ok("one-chunk", "exactly chunk_size bytes: one full chunk that is final", CS)
    ok(
        "one-chunk-plus-one",
        "chunk_size + 1 bytes: a full chunk, then a 1-byte final chunk",
        CS + 1,
    )
    ok(
        "two-chunks",
        "exactly 2 * chunk_size: the full second chunk is final (no empty chunk)",
        2 * CS,
    )
    ok("several-chunks", "3 full chunks and a 100-byte final chunk", 3 * CS + 100)
    ok("chunk-size-4096", "chunk size 4096, 5000 bytes", 5000, chunk_size=4096)
    ok(
        "chunk-size-default",
        "chunk size 1 MiB (the default), 300 bytes",
        300,
        chunk_size=1024 * 1024,
    )
    ok(
        "chunk-size-max",
        "chunk size 16 MiB (the maximum), 300 bytes",
        300,
        chunk_size=16 * 1024 * 1024,
    )
    ok(
        "key-id-64",
        "a key id of the maximum length, 64 bytes",
        100,
        key_id="k" * 31 + "-" + "0123456789abcdef" * 2,
    )
    ok("empty-associated-data", "associated data is empty", 100, ad=b"")

    payload = words(8000)
    frame = zstandard.ZstdCompressor(level=3).compress(payload)
    stream = encode(frame, compression=COMPRESSION_ZSTD)
    vectors.append(
        Vector(
            "zstd-compressed",
            "compression byte 1: the stream plaintext is a zstd frame; payload is its content",
            "success",
            stream,
            compression=COMPRESSION_ZSTD,
            plaintext=frame,
            payload=payload,
            from_encoder=True,
        )
    )
    return vectors


def header_failures(base: bytes) -> list[Vector]:
    hl = header_len()
    cases: list[tuple[str, str, bytes]] = [
        ("empty-file", "zero bytes", b""),
        ("short-fixed-header", "ends inside the fixed header", base[:10]),
        ("truncated-in-salt", "ends one byte before the end of the salt", base[: hl - 1]),
        ("bad-magic", "magic is EBKT", b"EBKT" + base[4:]),
        ("version-0", "version byte 0", with_fixed(base, version=0)),
        ("version-2", "version byte 2 (a future version)", with_fixed(base, version=2)),
        ("algorithm-0", "algorithm byte 0", with_fixed(base, algorithm=0)),
        ("algorithm-2", "algorithm byte 2", with_fixed(base, algorithm=2)),
        ("compression-2", "compression byte 2 (unknown)", with_fixed(base, compression=2)),
        ("reserved-set", "reserved byte 0x01", with_fixed(base, reserved=1)),
        ("reserved-high-bit", "reserved byte 0x80", with_fixed(base, reserved=0x80)),
        ("chunk-size-zero", "chunk size 0", with_fixed(base, chunk_size=0)),
        (
            "chunk-size-1023",
            "chunk size 1023, one below the minimum",
            with_fixed(base, chunk_size=1023),
        ),
        (
            "chunk-size-too-large",
            "chunk size 16 MiB + 1, one above the maximum",
            with_fixed(base, chunk_size=16 * 1024 * 1024 + 1),
        ),
        ("chunk-size-max-u32", "chunk size 0xffffffff", with_fixed(base, chunk_size=0xFFFFFFFF)),
        ("key-id-length-zero", "key id length 0", with_fixed(base, key_id_len=0)),
        (
            "key-id-length-65",
            "key id length 65 (65 key id bytes follow)",
            FIXED.pack(b"EBKS", 1, 1, 0, 0, CS, 65) + b"k" * 65 + base[FIXED.size + len(KEY_ID) :],
        ),
        (
            "key-id-non-ascii",
            "key id holds byte 0x80",
            base[: FIXED.size] + b"\x80" + base[FIXED.size + 1 :],
        ),
        (
            "key-id-space",
            "key id holds a space (0x20)",
            base[: FIXED.size + 3] + b" " + base[FIXED.size + 4 :],
        ),
        (
            "key-id-control",
            "key id holds a newline (0x0a)",
            base[: FIXED.size + 3] + b"\n" + base[FIXED.size + 4 :],
        ),
        (
            "key-id-del",
            "key id holds DEL (0x7f)",
            base[: FIXED.size + 3] + b"\x7f" + base[FIXED.size + 4 :],
        ),
    ]
    return [Vector(n, d, "header failure", s) for n, d, s in cases]


def payload_failures(base: bytes, two: bytes, one_byte: bytes, empty: bytes) -> list[Vector]:
    """``base`` has chunks of 1024, 1024, 1024, 100 bytes; ``two`` has 1024, 1024."""
    hl = header_len()
    header, chunks = split(base)
    assert [len(c) - TAG for c in chunks] == [CS, CS, CS, 100]
    h2, c2 = split(two)
    body0 = hl + TAG  # a byte inside the first chunk's ciphertext body
    vectors = [
        ("header-only", "a valid header and no chunk at all", header),
        ("partial-tag", "ends 10 bytes into the first chunk (shorter than a tag)", base[: hl + 10]),
        (
            "truncated-at-chunk-boundary",
            "the final chunk is missing: the stream ends after 3 full chunks",
            header + b"".join(chunks[:3]),
        ),
        ("truncated-after-first-chunk", "only the first full chunk is left", header + chunks[0]),
        (
            "truncated-two-chunks-boundary",
            "a 2-full-chunk stream cut after its first chunk",
            h2 + c2[0],
        ),
        ("truncated-inside-final-chunk", "the last byte of the final chunk is missing", base[:-1]),
        ("chunk-dropped", "the second chunk is removed", header + chunks[0] + b"".join(chunks[2:])),
        (
            "chunks-swapped",
            "the first two chunks are swapped",
            header + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        ),
        (
            "chunk-duplicated",
            "the second chunk appears twice",
            header + chunks[0] + chunks[1] + chunks[1] + b"".join(chunks[2:]),
        ),
        ("final-chunk-duplicated", "the final (short) chunk appears twice", base + chunks[3]),
        ("full-final-chunk-duplicated", "a full final chunk appears twice", two + c2[1]),
        ("trailing-byte", "one 0x00 byte after the short final chunk", base + b"\x00"),
        ("trailing-byte-after-full-final", "one 0x00 byte after a full final chunk", two + b"\x00"),
        ("trailing-tag-sized", "16 zero bytes after the final chunk", base + bytes(16)),
        (
            "trailing-after-empty",
            "one byte after the empty final chunk of an empty stream",
            empty + b"\x00",
        ),
        (
            "flip-key-id",
            "one bit flipped in the key id ('d' -> 'e'); the header still parses",
            flip(base, FIXED.size),
        ),
        ("flip-salt", "one bit flipped in the salt", flip(base, hl - 5)),
        (
            "flip-chunk-size",
            "chunk size 1024 -> 1025 (still valid, but authenticated)",
            with_fixed(base, chunk_size=CS + 1),
        ),
        (
            "flip-compression",
            "compression byte 0 -> 1 (authenticated)",
            with_fixed(base, compression=1),
        ),
        ("flip-first-body", "one bit flipped in the first chunk's ciphertext", flip(base, body0)),
        (
            "flip-middle-tag",
            "one bit flipped in the second chunk's tag",
            flip(base, hl + 2 * (CS + TAG) - 1),
        ),
        (
            "flip-middle-body",
            "one bit flipped in the third chunk's ciphertext",
            flip(base, hl + 2 * (CS + TAG) + 7, 0x80),
        ),
        (
            "flip-final-tag",
            "one bit flipped in the final chunk's tag (last byte)",
            flip(base, len(base) - 1),
        ),
        (
            "flip-empty-tag",
            "one bit flipped in the tag of an empty stream",
            flip(empty, len(empty) - 1),
        ),
        (
            "flip-one-byte-body",
            "one bit flipped in the body of a one-byte stream",
            flip(one_byte, hl),
        ),
    ]
    out = [Vector(n, d, "payload failure", s) for n, d, s in vectors]
    out.append(
        Vector(
            "wrong-associated-data",
            "a valid stream read with other associated data (another object name)",
            "payload failure",
            base,
            associated_data=OTHER_AD,
        )
    )
    out.append(
        Vector(
            "wrong-key",
            "a valid stream read with another data key",
            "payload failure",
            base,
            key=OTHER_KEY,
        )
    )

    p = pseudo_random(3 * CS)
    crafted: list[tuple[str, str, list[tuple[int, bool, bytes]]]] = [
        (
            "empty-final-after-full",
            "authentic, but a full chunk is followed by an empty final chunk (only the first "
            "chunk may be empty)",
            [(0, False, p[:CS]), (1, True, b"")],
        ),
        (
            "final-flag-on-first-of-two",
            "chunk 0 is sealed as final, yet chunk 1 follows",
            [(0, True, p[:CS]), (1, True, p[CS : CS + 10])],
        ),
        (
            "no-final-flag-short",
            "the short last chunk is sealed as not final",
            [(0, False, p[:CS]), (1, False, p[CS : CS + 10])],
        ),
        (
            "no-final-flag-full",
            "every chunk is full and sealed as not final",
            [(0, False, p[:CS]), (1, False, p[CS : 2 * CS])],
        ),
        (
            "counter-starts-at-one",
            "the chunks are numbered 1, 2 instead of 0, 1",
            [(1, False, p[:CS]), (2, True, p[CS : CS + 10])],
        ),
        (
            "counter-skips",
            "the chunks are numbered 0, 2",
            [(0, False, p[:CS]), (2, True, p[CS : CS + 10])],
        ),
        (
            "short-non-final-chunk",
            "chunk 0 holds 500 bytes and is not final, chunk 1 follows",
            [(0, False, p[:500]), (1, True, p[500:600])],
        ),
    ]
    out += [Vector(n, d, "payload failure", seal(c)) for n, d, c in crafted]
    return out


def raw_frame(content: bytes, *, blocks: int = 1) -> bytes:
    """A zstd frame (RFC 8878) built by hand from raw blocks: the same bytes with every zstd.

    Frame header: single segment, 1-byte content size, no checksum, no dictionary.
    """
    assert len(content) < 256 and blocks >= 1
    out = (0xFD2FB528).to_bytes(4, "little") + bytes([0x20, len(content)])
    size = -(-len(content) // blocks) if content else 0
    pieces = [content[i : i + size] for i in range(0, len(content), size)] if content else [b""]
    for i, piece in enumerate(pieces):
        last = 1 if i == len(pieces) - 1 else 0
        out += ((len(piece) << 3) | last).to_bytes(3, "little") + piece
    return out


def zstd_vectors() -> list[Vector]:
    """Compression 1: what the payload layer must accept and reject (docs/format.md,
    "Compression").  Every failure here is an authentic stream (it decrypts to
    ``plaintext``) whose zstd data is incomplete or not zstd at all."""

    def make(
        name: str, description: str, expect: str, plaintext: bytes, payload: bytes | None = None
    ) -> Vector:
        return Vector(
            name,
            description,
            expect,
            encode(plaintext, compression=COMPRESSION_ZSTD),
            compression=COMPRESSION_ZSTD,
            plaintext=plaintext,
            payload=payload,
            from_encoder=True,
        )

    hello, world = raw_frame(b"hello, "), raw_frame(b"world", blocks=2)
    checked = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(b"checked " * 8)
    assert checked[4] & 0x04, "the frame must carry a content checksum"
    fail = "decompression failure"
    return [
        make(
            "zstd-two-frames",
            "two zstd frames (raw blocks, the second in two blocks): "
            "the payload is their contents in order",
            "success",
            hello + world,
            payload=b"hello, world",
        ),
        make(
            "zstd-no-frames",
            "compression 1 with an empty plaintext: zero frames, empty payload",
            "success",
            b"",
            payload=b"",
        ),
        make(
            "zstd-truncated-in-block",
            "the only frame ends inside its block's content",
            fail,
            hello[:-2],
        ),
        make(
            "zstd-truncated-missing-last-block",
            "the frame ends after a complete block that is not the last one",
            fail,
            world[: len(world) - 3 - 2],
        ),
        make(
            "zstd-truncated-in-frame-header",
            "the frame ends after its magic number",
            fail,
            hello[:4],
        ),
        make(
            "zstd-truncated-second-frame",
            "a complete frame, then a second frame cut inside its header",
            fail,
            hello + world[:5],
        ),
        make(
            "zstd-truncated-checksum",
            "the frame's 4-byte content checksum is cut to 2 bytes",
            fail,
            checked[:-2],
        ),
        make(
            "zstd-not-zstd",
            "authentic plaintext that is not zstd data (no frame magic)",
            fail,
            b"plain text, not zstd",
        ),
    ]


def build() -> list[Vector]:
    success = success_vectors()
    by_name = {v.name: v.stream for v in success}
    return (
        success
        + header_failures(by_name["one-byte"])
        + payload_failures(
            by_name["several-chunks"], by_name["two-chunks"], by_name["one-byte"], by_name["empty"]
        )
        + zstd_vectors()
    )


def render(vector: Vector) -> str:
    return json.dumps(vector.to_json(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None, out: Callable[[str], object] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the files (overwrites)")
    args = parser.parse_args(argv)
    vectors = build()
    names = [v.name for v in vectors]
    assert len(set(names)) == len(names), "duplicate vector names"
    for v in vectors:
        path = OUT_DIR / f"{v.name}.json"
        text = render(v)
        state = "new"
        if path.exists():
            state = "same" if path.read_text() == text else "DIFFERENT"
        out(f"{v.expect:16} {v.name:34} {len(v.stream):6} bytes  {state}")
        if args.write:
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    out(
        f"{len(vectors)} vectors"
        + (f" written to {OUT_DIR}" if args.write else " (dry run; --write to write them)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
