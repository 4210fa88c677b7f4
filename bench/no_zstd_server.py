"""A PostgreSQL built without zstd: ebk-side zstd vs the server's gzip, side by side.

Usage: .venv/bin/python bench/no_zstd_server.py [--major 18] [--scale 50] [--rounds 3]

The PyPI builds of 16 and 18 (scripts/setup.sh) have neither zstd nor lz4; of
BASE_BACKUP's server-side methods only gzip is left.  ebk's fallback asks for an
uncompressed stream and compresses with zstd in its own process.  Interleaved
runs on one pgbench database:

- ``ebk zstd:3`` (the default config: level 3, compression_threads 0),
- ``ebk zstd:3 threads 2``,
- ``ebk level 0`` (no compression: what ebk costs to receive, encrypt and store;
  with server gzip ebk would do this on gzip's output),
- ``pg_basebackup server-gzip:1`` (the fastest gzip: what ebk would receive if
  it asked for gzip instead; ebk would still have to encrypt it),
- ``pg_basebackup none`` (no compression at all: the floor of reading the cluster).

Prints median seconds and stored bytes per variant.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Sample, median, pgbench_env, timed

from tests.support.postgres import PgCluster, init_cluster, pg_build


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load(cluster: PgCluster, bin_dir: Path, scale: int) -> int:
    import subprocess

    subprocess.run(
        [str(bin_dir / "pgbench"), "-i", "-q", "-s", str(scale), "postgres"],
        env=pgbench_env(cluster.port),
        check=True,
        capture_output=True,
    )
    cluster.psql("CHECKPOINT")
    return int(cluster.psql("SELECT pg_database_size('postgres')"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--major", type=int, default=18, choices=(16, 18))
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    build = pg_build(args.major).require()
    cluster = init_cluster(bin_dir=build.bin_dir)
    work = Path(tempfile.mkdtemp(prefix="ebk-bench-nozstd-"))
    try:
        env = pgbench_env(cluster.port)
        db_bytes = load(cluster, build.bin_dir, args.scale)
        ebk_configs = {}
        variants = (("ebk zstd:3", 3, 0), ("ebk zstd:3 threads 2", 3, 2), ("ebk level 0", 0, 0))
        for name, level, threads in variants:
            root = work / name.replace(" ", "_").replace(":", "")
            root.mkdir()
            config = root / "ebk.toml"
            config.write_text(
                f'[repository]\nurl = "file://{root}/repo"\n[keys]\nkeyfile = "{root}/kek.json"\n'
                f"{cluster.config_section()}\n[backup]\ncompression_level = {level}\n"
                f'compression_threads = {threads}\n[log]\nlevel = "warning"\n'
            )
            ebk = [sys.executable, "-m", "ebk", "--config", str(config)]
            timed([*ebk, "init"])
            ebk_configs[name] = (ebk, root / "repo" / "backups")
        pgbb = {"pg_basebackup server-gzip:1": "server-gzip:1", "pg_basebackup none": "none"}
        seconds: dict[str, list[float]] = {n: [] for n in [*ebk_configs, *pgbb]}
        stored: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, (ebk, backups) in ebk_configs.items():
                sample: Sample = timed([*ebk, "backup", "--type", "physical"])
                seconds[name].append(sample.seconds)
                stored[name] = tree_bytes(backups)
                shutil.rmtree(backups)
            for name, compress in pgbb.items():
                target = work / "pgbb"
                argv = [
                    str(build.bin_dir / "pg_basebackup"),
                    "-D", str(target), "-Ft", "-X", "fetch", f"--compress={compress}", "-c", "fast",
                ]  # fmt: skip
                seconds[name].append(timed(argv, env=env).seconds)
                stored[name] = tree_bytes(target)
                shutil.rmtree(target)
        result = {
            "server": f"PostgreSQL {args.major} ({build.source})",
            "database_bytes": db_bytes,
            "scale": args.scale,
            "rounds": args.rounds,
            "variants": {
                name: {
                    "median_seconds": round(median(values), 2),
                    "seconds": [round(v, 2) for v in values],
                    "stored_bytes": stored[name],
                }
                for name, values in seconds.items()
            },
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(
                f"{result['server']}: database {db_bytes / 2**20:.0f} MiB "
                f"(pgbench scale {args.scale}), {args.rounds} interleaved rounds"
            )
            for name, row in result["variants"].items():  # type: ignore[attr-defined]
                print(
                    f"  {name:30s} median {row['median_seconds']:6.2f} s  "
                    f"stored {row['stored_bytes'] / 2**20:7.1f} MiB  {row['seconds']}"
                )
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
