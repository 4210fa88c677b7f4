"""What the writer signature costs: signing one manifest, verifying 1,000.

    .venv/bin/python bench/signing.py

In-process, best of 5 rounds (CPU-bound; no I/O): the manifest of a physical
backup with two objects, canonicalised (RFC 8785) and signed (Ed25519) as a
backup does once; parsed and verified as `ebk list` does per manifest.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime

from common import sample_manifest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ebk.manifest import Manifest
from ebk.repository.layout import new_backup_id
from ebk.repository.writer import TrustedWriters, WriterKey


def manifest() -> Manifest:
    now = datetime.now(UTC)
    return sample_manifest(new_backup_id(now), now)


def best(rounds: int, fn: object) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    writer = WriterKey(Ed25519PrivateKey.generate())
    trusted = TrustedWriters([writer.public])
    dek = secrets.token_bytes(32)
    docs = []
    for _ in range(1000):
        m = manifest()
        m.seal(dek)
        m.sign(writer)
        docs.append(m.to_json())

    def seal_and_sign() -> None:
        m = manifest()
        m.seal(dek)
        m.sign(writer)

    def parse_only() -> None:
        for raw in docs:
            Manifest.from_json(raw, where="m")

    def parse_and_verify() -> None:
        for raw in docs:
            Manifest.from_json(raw, where="m").verify_signature(trusted)

    per_backup = best(5, lambda: [seal_and_sign() for _ in range(100)]) / 100
    parse = best(5, parse_only)
    verify = best(5, parse_and_verify)
    print(
        json.dumps(
            {
                "seal_and_sign_per_backup_ms": round(per_backup * 1000, 3),
                "list_1000_parse_ms": round(parse * 1000, 1),
                "list_1000_parse_and_verify_ms": round(verify * 1000, 1),
                "verify_overhead_per_manifest_us": round((verify - parse) / 1000 * 1e6, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
