"""ebk restore (physical) vs extracting pg_basebackup's tar, side by side.

Usage: .venv/bin/python bench/restore.py [--scale 50] [--rounds 3]

One pgbench database backed up once by each tool (zstd level 1); then, rounds
interleaved: `tar --zstd -xf base.tar.zst` of pg_basebackup's server-zstd
output, `ebk restore --no-verify` (decrypt + decompress + extract) and
`ebk restore` (the default, which also runs pg_verifybackup over the result).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Sample, load_pgbench, median, pg_basebackup_argv, pgbench_env, timed

from tests.support.postgres import init_cluster, make_postgres_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    cluster = init_cluster()
    work = make_postgres_dir("ebk-restore-bench-")
    try:
        env = pgbench_env(cluster.port)
        db_bytes = load_pgbench(cluster, args.scale)
        tarball = work / "pgbb"
        subprocess.run(
            pg_basebackup_argv(tarball, "server-zstd:1"),
            env=env,
            check=True,
            capture_output=True,
        )
        config = work / "ebk.toml"
        config.write_text(
            f'[repository]\nurl = "file://{work}/repo"\n[keys]\nkeyfile = "{work}/kek.json"\n'
            f"{cluster.config_section()}\n[backup]\ncompression_level = 1\n"
            '[preflight]\npolicy = "off"\n[log]\nlevel = "warning"\n'
        )
        ebk = [sys.executable, "-m", "ebk", "--config", str(config)]
        timed([*ebk, "init"])
        timed([*ebk, "backup", "--type", "physical"])

        untar: list[Sample] = []
        fast: list[Sample] = []
        full: list[Sample] = []
        for i in range(args.rounds):
            target = work / f"untar-{i}"
            target.mkdir()
            untar.append(
                timed(["tar", "--zstd", "-xf", str(tarball / "base.tar.zst"), "-C", str(target)])
            )
            shutil.rmtree(target)
            target = work / f"fast-{i}"
            fast.append(timed([*ebk, "restore", "latest", "--to", str(target), "--no-verify"]))
            shutil.rmtree(target)
            target = work / f"full-{i}"
            full.append(timed([*ebk, "restore", "latest", "--to", str(target)]))
            shutil.rmtree(target)
        base = median([s.seconds for s in untar])
        print(
            f"database: {db_bytes / 2**20:.0f} MiB (pgbench scale {args.scale}), "
            f"{args.rounds} rounds"
        )
        print(
            f"tar --zstd -xf (pg_basebackup server-zstd:1): median {base:.3f} s "
            f"{[round(s.seconds, 3) for s in untar]}"
        )
        for label, samples in (("ebk restore --no-verify", fast), ("ebk restore", full)):
            m = median([s.seconds for s in samples])
            print(
                f"{label:24}: median {m:.3f} s {[round(s.seconds, 3) for s in samples]}"
                f"  ratio {m / base:.2f}  peak RSS "
                f"{max(s.peak_rss_mib for s in samples):.1f} MiB"
            )
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
