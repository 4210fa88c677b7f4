"""A PostgreSQL built without zstd: ebk-side zstd vs the server's gzip, side by side.

Usage: .venv/bin/python bench/no_zstd_server.py [--major 18] [--scale 50] [--rounds 3]

The PyPI builds of 16 and 18 (scripts/setup.sh) have neither zstd nor lz4; of
BASE_BACKUP's server-side methods only gzip is left.  ebk's fallback asks for the
archives uncompressed and compresses with zstd in its own process.  Interleaved
runs on one pgbench database:

- ``ebk zstd:3``: the fallback with the default config (level 3,
  compression_threads 0), and ``ebk zstd:3 threads 2``;
- ``pg_basebackup server-gzip:1``: the server's fastest gzip, what the
  alternative (ask the server for gzip) would start from;
- ``pg_basebackup none``: no compression at all, the floor of reading the cluster.

Prints per variant the median wall time, the median CPU seconds of the client
(ebk or pg_basebackup, user+sys) and of the server (the walsender, read from
the postmaster's reaped-children times), and the bytes stored.  On a shared
2-core machine the CPU figures are the steadier ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Sample, median, pgbench_env, timed

from tests.support.postgres import PgCluster, init_cluster, pg_build


def server_cpu_seconds(cluster: PgCluster) -> float:
    """CPU of the server's exited children (the walsender of each backup), from
    the postmaster's cutime+cstime: on a shared machine CPU time is steadier than
    wall time, and server-side compression burns the database host's CPU."""
    pid = (cluster.data_dir / "postmaster.pid").read_text().split()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


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
        for name, threads in (("ebk zstd:3", 0), ("ebk zstd:3 threads 2", 2)):
            root = work / f"ebk-{threads}"
            root.mkdir()
            config = root / "ebk.toml"
            config.write_text(
                f'[repository]\nurl = "file://{root}/repo"\n[keys]\nkeyfile = "{root}/kek.json"\n'
                f"{cluster.config_section()}\n[backup]\ncompression_level = 3\n"
                f'compression_threads = {threads}\n[log]\nlevel = "warning"\n'
            )
            ebk = [sys.executable, "-m", "ebk", "--config", str(config)]
            timed([*ebk, "init"])
            ebk_configs[name] = (ebk, root / "repo" / "backups")
        pgbb = {"pg_basebackup server-gzip:1": "server-gzip:1", "pg_basebackup none": "none"}
        seconds: dict[str, list[float]] = {n: [] for n in [*ebk_configs, *pgbb]}
        client_cpu: dict[str, list[float]] = {n: [] for n in seconds}
        server_cpu: dict[str, list[float]] = {n: [] for n in seconds}
        stored: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, (ebk, backups) in ebk_configs.items():
                before = server_cpu_seconds(cluster)
                sample: Sample = timed([*ebk, "backup", "--type", "physical"])
                server_cpu[name].append(server_cpu_seconds(cluster) - before)
                seconds[name].append(sample.seconds)
                client_cpu[name].append(sample.cpu_seconds)
                stored[name] = tree_bytes(backups)
                shutil.rmtree(backups)
            for name, compress in pgbb.items():
                target = work / "pgbb"
                argv = [
                    str(build.bin_dir / "pg_basebackup"),
                    "-D", str(target), "-Ft", "-X", "fetch", f"--compress={compress}", "-c", "fast",
                ]  # fmt: skip
                before = server_cpu_seconds(cluster)
                sample = timed(argv, env=env)
                server_cpu[name].append(server_cpu_seconds(cluster) - before)
                seconds[name].append(sample.seconds)
                client_cpu[name].append(sample.cpu_seconds)
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
                    "client_cpu_median": round(median(client_cpu[name]), 2),
                    "server_cpu_median": round(median(server_cpu[name]), 2),
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
                    f"CPU client {row['client_cpu_median']:5.2f} s + server "
                    f"{row['server_cpu_median']:5.2f} s  "
                    f"stored {row['stored_bytes'] / 2**20:6.1f} MiB  {row['seconds']}"
                )
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
