"""ebk backup --type physical vs pg_basebackup -Ft --compress=client-zstd:1, side by side.

Usage: .venv/bin/python bench/physical_backup.py [--scale 50] [--rounds 3] [--level 1]

One pgbench database (scale 50 ~ 750 MiB), runs interleaved (pg_basebackup
server-zstd, pg_basebackup client-zstd, ebk, ...) so that a noisy machine
affects all alike; prints median times, ratios and ebk's peak RSS.  All write
to a local directory with zstd at the same level; ebk also encrypts.  ebk asks
PostgreSQL to compress (server-side zstd), so the server-zstd baseline isolates
what encryption (and ebk's fixed start-up) costs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Sample, load_pgbench, median, pg_basebackup_argv, pgbench_env, timed

from tests.support.postgres import init_cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cluster = init_cluster()
    work = Path(tempfile.mkdtemp(prefix="ebk-bench-"))
    try:
        env = pgbench_env(cluster.port)
        db_bytes = load_pgbench(cluster, args.scale)
        keyfile = work / "kek.json"
        config = work / "ebk.toml"
        config.write_text(
            f'[repository]\nurl = "file://{work}/repo"\n[keys]\nkeyfile = "{keyfile}"\n'
            f"{cluster.config_section()}\n[backup]\ncompression_level = {args.level}\n"
            f'compression_threads = {args.threads}\n[log]\nlevel = "warning"\n'
        )
        ebk = [sys.executable, "-m", "ebk", "--config", str(config)]
        timed([*ebk, "init"])
        base: list[Sample] = []
        server: list[Sample] = []
        ours: list[Sample] = []
        for i in range(args.rounds):
            target = work / f"pgbb-server-{i}"
            server.append(
                timed(
                    pg_basebackup_argv(target, f"server-zstd:{args.level}"),
                    env=env,
                )
            )
            shutil.rmtree(target)
            target = work / f"pgbb-{i}"
            base.append(
                timed(
                    pg_basebackup_argv(target, f"client-zstd:{args.level}"),
                    env=env,
                )
            )
            shutil.rmtree(target)
            ours.append(timed([*ebk, "backup", "--type", "physical"]))
            shutil.rmtree(work / "repo" / "backups")
        result = {
            "database_bytes": db_bytes,
            "scale": args.scale,
            "rounds": args.rounds,
            "zstd_level": args.level,
            "baseline_seconds": [round(s.seconds, 3) for s in base],
            "ebk_seconds": [round(s.seconds, 3) for s in ours],
            "baseline_median": round(median([s.seconds for s in base]), 3),
            "ebk_median": round(median([s.seconds for s in ours]), 3),
            "server_zstd_seconds": [round(s.seconds, 3) for s in server],
            "server_zstd_median": round(median([s.seconds for s in server]), 3),
            "ratio_vs_server_zstd": round(
                median([s.seconds for s in ours]) / median([s.seconds for s in server]), 3
            ),
            "ratio": round(
                median([s.seconds for s in ours]) / median([s.seconds for s in base]), 3
            ),
            "baseline_cpu_median": round(median([s.cpu_seconds for s in base]), 3),
            "ebk_cpu_median": round(median([s.cpu_seconds for s in ours]), 3),
            "ebk_peak_rss_mib": round(max(s.peak_rss_mib for s in ours), 1),
            "baseline_peak_rss_mib": round(max(s.peak_rss_mib for s in base), 1),
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            mib = db_bytes / 2**20
            print(
                f"database: {mib:.0f} MiB (pgbench scale {args.scale}), {args.rounds} rounds, "
                f"zstd:{args.level}"
            )
            print(
                f"pg_basebackup -Ft client-zstd: median {result['baseline_median']} s "
                f"{result['baseline_seconds']}"
            )
            print(
                f"ebk backup --type physical:    median {result['ebk_median']} s "
                f"{result['ebk_seconds']}"
            )
            print(
                f"pg_basebackup -Ft server-zstd: median {result['server_zstd_median']} s "
                f"{result['server_zstd_seconds']}"
            )
            print(f"ratio ebk/baseline: {result['ratio']}   (target <= 1.02)")
            print(
                f"ratio ebk/pg_basebackup server-zstd (same compression, the cost of "
                f"encryption alone): {result['ratio_vs_server_zstd']}"
            )
            print(
                f"client CPU seconds (user+sys, median): pg_basebackup "
                f"{result['baseline_cpu_median']}, ebk {result['ebk_cpu_median']}"
            )
            print(
                f"peak RSS: ebk {result['ebk_peak_rss_mib']} MiB (target <= 150), "
                f"pg_basebackup {result['baseline_peak_rss_mib']} MiB"
            )
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
