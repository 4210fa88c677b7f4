"""Stream-layer throughput (AES-256-GCM STREAM, no compression) by chunk size.

Usage: .venv/bin/python bench/chunk_size.py [--total-mib 512] [--rounds 4] [--json]

For each chunk size (64 KiB, 256 KiB, 1 MiB, 4 MiB) it encrypts --total-mib
MiB through EncryptingWriter and decrypts as much through DecryptingReader,
in 128 KiB writes and reads (what zstd hands the encryptor and asks of the
decryptor).  Runs are interleaved (every size once per round, after one
untimed warm-up round) so that drift affects all sizes alike; the median
round is reported.  The raw AESGCM line (one call per 4 MiB, no framing) is
the ceiling: the gap to it is the per-chunk cost of the framing in Python.

Throughput is computed from the process's CPU time (user + system), not wall
time: the bench is single-threaded, and CPU time does not count the time the
process waited for a core on a shared machine.  System time matters here:
large buffers can be mmap'ed and page-faulted afresh on every chunk.

Single-threaded and in memory (one 32 MiB ciphertext per size); it needs a
few seconds of one core for 512 MiB.  MB/s are 10^6 bytes per second.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ebk.format.stream import DecryptingReader, EncryptingWriter

KiB = 1024
MiB = 1024 * KiB
CHUNK_SIZES = [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB]
IO_SIZE = 128 * KiB
CIPHERTEXT_MIB = 32
KEY = bytes(32)
AD = b"ebk/bench/chunk_size"


class Sink:
    """A destination that only counts (the bench measures crypto, not storage)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.size += len(data)
        return len(data)


def encrypt(source: bytes, total: int, chunk_size: int, dest: io.BytesIO | Sink) -> float:
    view = memoryview(source)
    start = time.process_time()
    writer = EncryptingWriter(
        dest, KEY, key_id="dek-bench", associated_data=AD, chunk_size=chunk_size
    )
    done = 0
    while done < total:
        offset = done % len(source)
        piece = view[offset : offset + min(IO_SIZE, total - done)]
        writer.write(piece)
        done += len(piece)
    writer.close()
    return time.process_time() - start


def decrypt(ciphertext: bytes, repeat: int) -> tuple[float, int]:
    start = time.process_time()
    plain = 0
    for _ in range(repeat):
        reader = DecryptingReader(io.BytesIO(ciphertext), KEY, associated_data=AD)
        while part := reader.read(IO_SIZE):
            plain += len(part)
    return time.process_time() - start, plain


def raw_aesgcm(source: bytes, total: int) -> float:
    aead = AESGCM(KEY)
    block = source[: 4 * MiB]
    nonce = bytes(12)
    start = time.process_time()
    for _ in range(total // len(block)):
        sealed = aead.encrypt(nonce, block, None)
        aead.decrypt(nonce, sealed, None)
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--total-mib",
        type=int,
        default=512,
        help="MiB encrypted and decrypted per chunk size (default 512)",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    per_round = args.total_mib * MiB // args.rounds
    repeat = max(1, per_round // (CIPHERTEXT_MIB * MiB))
    source = os.urandom(8 * MiB)

    ciphertexts = {}
    for cs in CHUNK_SIZES:  # untimed setup
        buf = io.BytesIO()
        encrypt(source, CIPHERTEXT_MIB * MiB, cs, buf)
        ciphertexts[cs] = buf.getvalue()

    enc: dict[int, list[float]] = {cs: [] for cs in CHUNK_SIZES}
    dec: dict[int, list[float]] = {cs: [] for cs in CHUNK_SIZES}
    faults: dict[int, list[float]] = {cs: [] for cs in CHUNK_SIZES}
    raw: list[float] = []
    for round_no in range(args.rounds + 1):
        for cs in CHUNK_SIZES:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            seconds = encrypt(source, per_round, cs, Sink())
            seconds_dec, plain = decrypt(ciphertexts[cs], repeat)
            after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            if round_no:  # round 0 warms up the allocator and caches
                faults[cs].append((after - before) / ((per_round + plain) / MiB))
                enc[cs].append(per_round / seconds / 1e6)
                dec[cs].append(plain / seconds_dec / 1e6)
        seconds = raw_aesgcm(source, per_round)
        if round_no:
            raw.append(2 * per_round / seconds / 1e6)

    results = {}
    for cs in CHUNK_SIZES:
        e, d = statistics.median(enc[cs]), statistics.median(dec[cs])
        results[cs] = {
            "encrypt_mb_s": e,
            "decrypt_mb_s": d,
            "combined_mb_s": 2 / (1 / e + 1 / d),
            "minor_faults_per_mib": statistics.median(faults[cs]),
        }
    base = results[1 * MiB]["combined_mb_s"]
    ceiling = statistics.median(raw)
    if args.json:
        print(
            json.dumps(
                {
                    "chunk_sizes": {str(cs): r for cs, r in results.items()},
                    "raw_aesgcm_mb_s": ceiling,
                    "total_mib": args.total_mib,
                    "rounds": args.rounds,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"stream layer, no compression: {args.total_mib} MiB per size and direction, "
        f"{args.rounds} interleaved rounds, {IO_SIZE // KiB} KiB writes/reads, "
        "CPU-time MB/s (median)"
    )
    print(
        f"{'chunk':>8} {'encrypt MB/s':>13} {'decrypt MB/s':>13} {'combined':>9} "
        f"{'vs 1 MiB':>9} {'vs raw':>7} {'faults/MiB':>11}"
    )
    for cs, r in results.items():
        label = f"{cs // MiB} MiB" if cs >= MiB else f"{cs // KiB} KiB"
        print(
            f"{label:>8} {r['encrypt_mb_s']:13.0f} {r['decrypt_mb_s']:13.0f} "
            f"{r['combined_mb_s']:9.0f} {r['combined_mb_s'] / base:9.3f} "
            f"{r['combined_mb_s'] / ceiling:7.3f} {r['minor_faults_per_mib']:11.1f}"
        )
    print(f"raw AESGCM, 4 MiB per call, encrypt+decrypt: {ceiling:.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
