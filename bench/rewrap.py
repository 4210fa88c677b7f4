"""Re-wrap throughput: `ebk keys rewrap` of N backups against OpenBao Transit.

    .venv/bin/python bench/rewrap.py --backups 1000 --rounds 2 --workers 1,8,16

Starts the test suite's OpenBao (TLS, file audit device on: every request is
also written to its audit log), writes N synthetic backups (a key object
wrapped by Transit and a signed manifest each; no payload: a rewrap reads
and rewrites only key objects) into a local repository, then per round and
per worker count rotates the Transit key and times the in-process rewrap
(rate limit off) of every key object to the new version.  Worker counts are
interleaved within each round; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)

from ebk.app.keylife import rewrap_all_backups
from ebk.runtime import Runtime
from tests.keys.synthetic import add_backups
from tests.support.ebkenv import kms_env
from tests.support.openbao import run_openbao, vault_toml


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backups", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="1,8,16")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="ebk-bench-rewrap-"))
    with run_openbao(root / "openbao") as bao:
        bao.bao("write", "-f", "transit/keys/bench", "derived=true")
        env = kms_env(root / "ebk", None, vault_toml(bao, key="bench", extra=""))
        env.config_path.write_text(env.config_path.read_text() + '\n[preflight]\npolicy = "off"\n')
        t = time.perf_counter()
        add_backups(Runtime.load(env.config_path), args.backups)
        print(f"wrote {args.backups} backups in {time.perf_counter() - t:.1f}s")
        results: dict[int, list[float]] = {w: [] for w in workers}
        for round_ in range(args.rounds):
            for w in workers if round_ % 2 == 0 else reversed(workers):
                bao.bao("write", "-f", "transit/keys/bench/rotate")
                runtime = Runtime.load(env.config_path)
                report = rewrap_all_backups(runtime, workers=w, rate=0)
                assert report.rewrapped == args.backups, report
                results[w].append(args.backups / report.seconds)
                print(
                    json.dumps(
                        {
                            "round": round_,
                            "workers": w,
                            "seconds": round(report.seconds, 2),
                            "backups_per_s": round(args.backups / report.seconds, 1),
                        }
                    )
                )
        print(f"\n| workers | backups/s (median of {args.rounds}) | vs 1 worker |")
        print("|---|---|---|")
        base = statistics.median(results[workers[0]])
        for w in workers:
            med = statistics.median(results[w])
            print(f"| {w} | {med:.0f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
