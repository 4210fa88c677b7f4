"""Fuzz targets: every parser of a document read from the repository, and the stream.

Each target feeds attacker bytes to one reader and accepts exactly two outcomes:
a parsed value, or ebk's own error (an operator message and exit code).  Any
other exception is a crash: a traceback for the operator and a bug.
"""

from __future__ import annotations

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
    try:
        parsed.verify(KEY)
    except EbkError:
        pass
    try:
        parsed.verify_signature(TrustedWriters([]))
    except EbkError:
        pass


def key_object(data: bytes) -> None:
    try:
        KeyObject.from_json(data, where="fuzz")
    except EbkError:
        pass


def writer_key(data: bytes) -> None:
    try:
        open_writer_key(data, [], repository_id="repo-fuzz")
    except EbkError:
        pass


def lease(data: bytes) -> None:
    try:
        LeaseRecord.from_json(data)
    except (ValueError, KeyError, TypeError, RecursionError):
        pass  # the lease reader turns exactly these into LockBusy


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
