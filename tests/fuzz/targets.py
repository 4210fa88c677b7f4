"""Fuzz targets: every parser of a document read from the repository, and the stream.

Each target feeds attacker bytes to one reader and accepts exactly two outcomes:
a parsed value, or ebk's own error (an operator message and exit code).  Any
other exception is a crash: a traceback for the operator and a bug.
"""

from __future__ import annotations

import contextlib
import io
import json

from ebk.errors import EbkError
from ebk.format.payload import PayloadReader
from ebk.keys.envelope import KeyObject
from ebk.manifest import Manifest
from ebk.repository.lease import LeaseRecord
from ebk.repository.writer import TrustedWriters, open_writer_key

KEY = bytes(range(32))
AD = b"ebk/20250101T000000Z-abcdef/base.tar.ebk"
READ_CAP = 8 * 1024 * 1024  # no target may produce more plaintext than this


def manifest(data: bytes) -> None:
    try:
        parsed = Manifest.from_json(data, where="fuzz")
    except EbkError:
        return
    parsed.to_public()
    with contextlib.suppress(EbkError):
        parsed.verify(KEY)
    with contextlib.suppress(EbkError):
        parsed.verify_signature(TrustedWriters([]))


def key_object(data: bytes) -> None:
    with contextlib.suppress(EbkError):
        KeyObject.from_json(data, where="fuzz")


def writer_key(data: bytes) -> None:
    with contextlib.suppress(EbkError):
        open_writer_key(data, [], repository_id="repo-fuzz")


def lease(data: bytes) -> None:
    # The lease reader turns exactly these into LockBusy.
    with contextlib.suppress(ValueError, KeyError, TypeError, RecursionError):
        LeaseRecord.from_json(data)


def stream(data: bytes) -> None:
    try:
        reader = PayloadReader(io.BytesIO(data), KEY, associated_data=AD)
        total = 0
        while chunk := reader.read(1024 * 1024):
            total += len(chunk)
            assert total <= READ_CAP, "plaintext beyond the cap"
    except EbkError:
        pass


TARGETS = {
    "manifest": manifest,
    "key_object": key_object,
    "writer_key": writer_key,
    "lease": lease,
    "stream": stream,
}


def all_targets(data: bytes) -> None:
    """One input through every target (atheris drives this)."""
    for target in TARGETS.values():
        target(data)


def json_seed() -> bytes:
    return json.dumps({"format": "ebk-manifest", "manifest_version": 2}).encode()
