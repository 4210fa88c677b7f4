"""The stream-v1 test vectors (tests/vectors/stream-v1/*.json).

THE VECTORS ARE FROZEN.  Every future version of ebk must keep decoding every
one of them exactly as its ``expect`` says: backups written today must restore
in ten years.  Never edit or regenerate a vector to make this test pass; a
failure here means the decoder broke compatibility with format v1.  New
vectors may be added (tests/vectors/generate.py), existing ones never change.

Each vector is checked twice: by ebk's streaming decoder, and by a small
independent decoder written from docs/format.md alone (below), so the
specification and the code cannot drift apart silently.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ebk.errors import IntegrityError
from ebk.format.payload import PayloadReader
from ebk.format.stream import (
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    DecryptingReader,
    EncryptingWriter,
    read_header,
)

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "stream-v1"
VECTORS = sorted(VECTOR_DIR.glob("*.json"))
EXPECTATIONS = ("success", "header failure", "payload failure", "decompression failure")

# Every rule of docs/format.md section "Reader requirements" has a vector; this
# list keeps anyone from deleting one.
REQUIRED = {
    "empty",
    "one-byte",
    "one-chunk",
    "one-chunk-plus-one",
    "two-chunks",
    "several-chunks",
    "zstd-compressed",
    "key-id-64",
    "empty-associated-data",
    "empty-file",
    "bad-magic",
    "version-2",
    "algorithm-2",
    "compression-2",
    "reserved-set",
    "chunk-size-1023",
    "chunk-size-too-large",
    "key-id-length-zero",
    "key-id-length-65",
    "key-id-non-ascii",
    "key-id-control",
    "truncated-in-salt",
    "header-only",
    "truncated-at-chunk-boundary",
    "truncated-inside-final-chunk",
    "chunk-dropped",
    "chunks-swapped",
    "chunk-duplicated",
    "final-chunk-duplicated",
    "trailing-byte",
    "trailing-byte-after-full-final",
    "flip-key-id",
    "flip-salt",
    "flip-chunk-size",
    "flip-compression",
    "flip-middle-tag",
    "flip-middle-body",
    "flip-final-tag",
    "wrong-associated-data",
    "wrong-key",
    "empty-final-after-full",
    "final-flag-on-first-of-two",
    "no-final-flag-full",
    "counter-starts-at-one",
    "zstd-two-frames",
    "zstd-no-frames",
    "zstd-truncated-in-block",
    "zstd-truncated-missing-last-block",
    "zstd-truncated-in-frame-header",
    "zstd-truncated-second-frame",
    "zstd-truncated-checksum",
    "zstd-not-zstd",
}


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    assert doc["expect"] in EXPECTATIONS, path.name
    assert doc["name"] == path.stem
    return doc


# --------------------------------------------------------------------------
# An independent decoder, written from docs/format.md only (not from stream.py).


class HeaderFailure(Exception):
    pass


class PayloadFailure(Exception):
    pass


def reference_decode(stream: bytes, key: bytes, ad: bytes) -> tuple[dict[str, Any], bytes]:
    """Whole-buffer decoder following the specification step by step."""
    if len(stream) < 13:
        raise HeaderFailure("short fixed header")
    magic, version, algorithm, compression, reserved, chunk_size, key_id_len = struct.unpack(
        ">4sBBBBIB", stream[:13]
    )
    if magic != b"EBKS" or version != 1 or algorithm != 1 or reserved != 0:
        raise HeaderFailure("magic/version/algorithm/reserved")
    if compression not in (0, 1):
        raise HeaderFailure("compression")
    if not 1024 <= chunk_size <= 16 * 1024 * 1024:
        raise HeaderFailure("chunk size")
    if not 1 <= key_id_len <= 64:
        raise HeaderFailure("key id length")
    header_len = 13 + key_id_len + 32
    if len(stream) < header_len:
        raise HeaderFailure("truncated header")
    key_id = stream[13 : 13 + key_id_len]
    if any(not 0x21 <= b <= 0x7E for b in key_id):
        raise HeaderFailure("key id bytes")
    header = stream[:header_len]
    salt = header[-32:]
    info = (
        b"ebk/stream/v1" + struct.pack(">I", len(header)) + header + struct.pack(">I", len(ad)) + ad
    )
    subkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)
    aead = AESGCM(subkey)
    body = stream[header_len:]
    sealed_size = chunk_size + 16
    if not body:
        raise PayloadFailure("no final chunk")
    chunks = [body[i : i + sealed_size] for i in range(0, len(body), sealed_size)]
    out = bytearray()
    for i, sealed in enumerate(chunks):
        final = i == len(chunks) - 1
        if len(sealed) < 16:
            raise PayloadFailure("chunk shorter than a tag")
        nonce = i.to_bytes(11, "big") + (b"\x01" if final else b"\x00")
        try:
            plain = aead.decrypt(nonce, sealed, None)
        except InvalidTag:
            raise PayloadFailure(f"chunk {i} failed authentication") from None
        if final and not plain and i > 0:
            raise PayloadFailure("empty final chunk after the first")
        out += plain
    facts = {
        "chunk_size": chunk_size,
        "key_id": key_id.decode(),
        "salt": salt.hex(),
        "compression": "zstd" if compression == 1 else "none",
    }
    return facts, bytes(out)


def reference_payload(plaintext: bytes) -> bytes:
    """Compression 1: zstd frames in order; the data must end where a frame ends."""
    out = bytearray()
    rest = plaintext
    while rest:
        frame = zstandard.ZstdDecompressor().decompressobj()
        try:
            out += frame.decompress(rest)
        except zstandard.ZstdError as exc:
            raise PayloadFailure(f"not zstd data: {exc}") from None
        if not frame.eof:
            raise PayloadFailure("the zstd data ends inside a frame")
        rest = frame.unused_data
    return bytes(out)


# --------------------------------------------------------------------------


def test_vector_set_is_complete() -> None:
    names = {p.stem for p in VECTORS}
    assert names >= REQUIRED, f"missing vectors: {sorted(REQUIRED - names)}"
    kinds = {load(p)["expect"] for p in VECTORS}
    assert kinds == set(EXPECTATIONS)


def _decode_with_ebk(doc: dict[str, Any], read_size: int) -> tuple[DecryptingReader, bytes]:
    source = io.BytesIO(bytes.fromhex(doc["stream"]))
    reader = DecryptingReader(
        source, bytes.fromhex(doc["key"]), associated_data=bytes.fromhex(doc["associated_data"])
    )
    out = bytearray()
    while part := reader.read(read_size):
        out += part
    return reader, bytes(out)


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_ebk_decoder(path: Path) -> None:
    doc = load(path)
    stream = bytes.fromhex(doc["stream"])
    key = bytes.fromhex(doc["key"])
    ad = bytes.fromhex(doc["associated_data"])
    if doc["expect"] == "header failure":
        with pytest.raises(IntegrityError):
            read_header(io.BytesIO(stream))
        with pytest.raises(IntegrityError):
            DecryptingReader(io.BytesIO(stream), key, associated_data=ad)
        return
    header, _ = read_header(io.BytesIO(stream))
    if doc["expect"] == "decompression failure":
        # Authentic: the stream layer releases the plaintext; the payload layer must refuse it.
        _, plaintext = _decode_with_ebk(doc, 1000)
        assert plaintext.hex() == doc["plaintext"]
        for read_size in (-1, 1, 1000):
            reader = PayloadReader(io.BytesIO(stream), key, associated_data=ad)
            with pytest.raises(IntegrityError, match=r"zstd|decompress"):
                while reader.read(read_size):
                    pass
        return
    if doc["expect"] == "payload failure":
        for read_size in (-1, 1, 1000):
            reader = DecryptingReader(io.BytesIO(stream), key, associated_data=ad)
            with pytest.raises(IntegrityError):
                while reader.read(read_size):
                    pass
            with pytest.raises(IntegrityError):  # the failure is sticky
                reader.read(1)
        return
    assert header.chunk_size == doc["chunk_size"]
    assert header.key_id == doc["key_id"]
    assert header.salt.hex() == doc["salt"]
    assert header.compression == (
        COMPRESSION_ZSTD if doc["compression"] == "zstd" else COMPRESSION_NONE
    )
    for read_size in (-1, 1, 7, 1024, 5000):
        _, plaintext = _decode_with_ebk(doc, read_size)
        assert plaintext.hex() == doc["plaintext"]
    if "payload" in doc:
        for read_size in (-1, 1, 7):
            reader = PayloadReader(io.BytesIO(stream), key, associated_data=ad)
            payload = b"".join(iter(lambda: reader.read(read_size), b""))
            assert payload.hex() == doc["payload"]


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_reference_decoder(path: Path) -> None:
    """The specification alone decodes every vector the same way."""
    doc = load(path)
    args = (
        bytes.fromhex(doc["stream"]),
        bytes.fromhex(doc["key"]),
        bytes.fromhex(doc["associated_data"]),
    )
    if doc["expect"] == "header failure":
        with pytest.raises(HeaderFailure):
            reference_decode(*args)
    elif doc["expect"] == "payload failure":
        with pytest.raises(PayloadFailure):
            reference_decode(*args)
    elif doc["expect"] == "decompression failure":
        facts, plaintext = reference_decode(*args)
        assert plaintext.hex() == doc["plaintext"] and facts["compression"] == "zstd"
        with pytest.raises(PayloadFailure):
            reference_payload(plaintext)
    else:
        facts, plaintext = reference_decode(*args)
        assert plaintext.hex() == doc["plaintext"]
        assert facts == {k: doc[k] for k in ("chunk_size", "key_id", "salt", "compression")}
        if "payload" in doc:
            assert reference_payload(plaintext).hex() == doc["payload"]


@pytest.mark.parametrize(
    "path", [p for p in VECTORS if load(p)["from_encoder"]], ids=lambda p: p.stem
)
def test_encoder_reproduces_vector(path: Path) -> None:
    """With the vector's salt the encoder writes exactly the frozen bytes."""
    doc = load(path)
    out = io.BytesIO()
    writer = EncryptingWriter(
        out,
        bytes.fromhex(doc["key"]),
        key_id=doc["key_id"],
        associated_data=bytes.fromhex(doc["associated_data"]),
        compression=COMPRESSION_ZSTD if doc["compression"] == "zstd" else COMPRESSION_NONE,
        chunk_size=doc["chunk_size"],
        salt=bytes.fromhex(doc["salt"]),
    )
    writer.write(bytes.fromhex(doc["plaintext"]))
    writer.close()
    assert out.getvalue().hex() == doc["stream"]


def test_generator_dry_run_writes_nothing(tmp_path: Path) -> None:
    """The generator prints by default; only --write touches the frozen files."""
    from tests.vectors import generate

    before = {p.name: p.read_bytes() for p in VECTORS}
    lines: list[str] = []
    assert generate.main([], out=lines.append) == 0
    assert lines[-1].endswith("(dry run; --write to write them)")
    assert {p.name: p.read_bytes() for p in sorted(VECTOR_DIR.glob("*.json"))} == before
    # The generator still makes the frozen bytes; only a frame made by the zstd
    # library may differ with another zstd release (decoding it must still work).
    changed = [line for line in lines if line.endswith("DIFFERENT")]
    assert all(
        "zstd-compressed" in line or "zstd-truncated-checksum" in line for line in changed
    ), changed
