"""What a concurrent `ebk backup --type physical` costs the database: pgbench TPS and
latency with and without a backup running, per compression placement and max_rate.

Usage (root): .venv/bin/python bench/backup_impact.py [--scale 30] [--duration 20]
              [--rounds 3] [--variants baseline,server,client,none,client-50M,...]
              [--json OUT]

One PostgreSQL 15 cluster (fsync on, shared_buffers 128MB) with pgbench data;
a local file:// repository on the same disk.  Each round runs every variant once,
in a rotated order (interleaved): pgbench TPC-B (2 clients) for --duration
seconds while, except for `baseline`, ebk backs the cluster up in a loop (a
backup still running when pgbench ends is stopped with SIGTERM, which ebk
cleans up).  A variant's TPS ratio is its TPS over the same round's baseline.
Variants: baseline | server | client | none | <placement>-<max_rate> (e.g.
client-50M) | <placement>-nice (ebk under `nice -n 10`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_pgbench, pgbench_env

from ebk.bench.stats import percentile
from tests.support.postgres import PG_BIN, PgCluster, init_cluster

DEFAULT_VARIANTS = "baseline,server,client,none,client-nice,client-50M,client-20M"


def backup_toml(variant: str) -> tuple[str, bool]:
    """[backup] section for a variant, and whether ebk runs niced."""
    parts = variant.split("-")
    place, extra = parts[0], parts[1:]
    lines = []
    if place == "none":
        lines.append("compression_level = 0")
    else:
        lines.append(f'compression_location = "{place}"')
    nice = "nice" in extra
    rates = [e for e in extra if e != "nice"]
    if rates:
        lines.append(f'max_rate = "{rates[0]}"')
    return "\n".join(lines), nice


def write_config(root: Path, cluster: PgCluster, variant: str) -> Path:
    section, _ = backup_toml(variant)
    config = root / f"{variant}.toml"
    config.write_text(
        f'[repository]\nurl = "file://{root / "repo"}"\n\n[keys]\nprovider = "keyfile"\n'
        f'keyfile = "{root / "kek.json"}"\n\n[log]\nformat = "json"\nlevel = "warning"\n\n'
        f"{cluster.config_section()}\n[backup]\n{section}\n"
    )
    return config


def ebk_argv(config: Path, nice: bool, *args: str) -> list[str]:
    argv = [sys.executable, "-m", "ebk", "--config", str(config), *args]
    return ["nice", "-n", "10", *argv] if nice else argv


def run_variant(
    cluster: PgCluster, root: Path, variant: str, duration: int, clients: int
) -> dict[str, object]:
    log_dir = Path(tempfile.mkdtemp(prefix="ebk-impact-logs-"))
    cluster.psql("TRUNCATE pgbench_history")
    cluster.psql("VACUUM pgbench_branches, pgbench_tellers")
    cluster.psql("CHECKPOINT")
    bench = subprocess.Popen(
        [
            str(PG_BIN / "pgbench"),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(clients),
            "-T",
            str(duration),
            "-l",
            f"--log-prefix={log_dir / 'tx'}",
            "postgres",
        ],
        env=pgbench_env(cluster.port),
        cwd=log_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    backups: list[float] = []
    repo_bytes = 0
    if variant != "baseline":
        config = root / f"{variant}.toml"
        _, nice = backup_toml(variant)
        while bench.poll() is None:
            began = time.monotonic()
            proc = subprocess.Popen(
                ebk_argv(config, nice, "backup", "--type", "physical", "--json"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            while proc.poll() is None and bench.poll() is None:
                time.sleep(0.1)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=120)
                break
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"{variant}: ebk backup failed: {err[-2000:]}")
            backups.append(time.monotonic() - began)
            repo_bytes = int(json.loads(out).get("stored_size") or 0)
    out, err = bench.communicate()
    if bench.returncode != 0:
        raise SystemExit(f"pgbench failed: {err[-2000:]}")
    tps = float(
        next(
            line.split()[2]
            for line in out.splitlines()
            if line.startswith("tps =") and "without initial" in line
        )
    )
    lat: list[float] = []
    for path in log_dir.glob("tx.*"):
        lat += [int(line.split()[2]) / 1000 for line in path.read_text().splitlines()]
        path.unlink()
    log_dir.rmdir()
    lat.sort()
    return {
        "tps": tps,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "backups_completed": len(backups),
        "backup_seconds": statistics.median(backups) if backups else None,
        "stored_bytes": repo_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=int, default=30)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = args.variants.split(",")
    cluster = init_cluster()
    root = Path(tempfile.mkdtemp(prefix="ebk-impact-", dir="/var/tmp"))
    try:
        cluster.psql("ALTER SYSTEM SET fsync = on")
        cluster.psql("ALTER SYSTEM SET max_wal_size = '2GB'")
        cluster.psql("SELECT pg_reload_conf()")
        size = load_pgbench(cluster, args.scale)
        for variant in variants:
            write_config(root, cluster, variant)
        first = write_config(root, cluster, "client")
        subprocess.run(ebk_argv(first, False, "init"), check=True, capture_output=True)
        load_start = [round(x, 2) for x in os.getloadavg()]
        results: dict[str, list[dict[str, object]]] = {v: [] for v in variants}
        for number in range(args.rounds):
            order = variants[number % len(variants) :] + variants[: number % len(variants)]
            for variant in order:
                sample = run_variant(cluster, root, variant, args.duration, args.clients)
                results[variant].append(sample)
                print(f"round {number + 1} {variant}: {sample}", file=sys.stderr, flush=True)
        report = {
            "database_bytes": size,
            "scale": args.scale,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "clients": args.clients,
            "cpus": os.cpu_count(),
            "load_average_start": load_start,
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "variants": {},
        }
        for variant in variants:
            samples = results[variant]
            ratios = [
                s["tps"] / b["tps"] for s, b in zip(samples, results["baseline"], strict=True)
            ]  # type: ignore[operator]
            entry = {
                "tps": [s["tps"] for s in samples],
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "p50_ms_median": statistics.median(float(s["p50_ms"]) for s in samples),  # type: ignore[arg-type]
                "p99_ms_median": statistics.median(float(s["p99_ms"]) for s in samples),  # type: ignore[arg-type]
                "backup_seconds": [s["backup_seconds"] for s in samples],
                "backups_completed": [s["backups_completed"] for s in samples],
                "stored_bytes": max(int(s["stored_bytes"]) for s in samples),  # type: ignore[call-overload]
            }
            report["variants"][variant] = entry  # type: ignore[index]
            print(
                f"{variant:<14} ratio {entry['ratio_median']:.3f} "
                f"[{entry['ratio_min']:.3f}-{entry['ratio_max']:.3f}] "
                f"p99 {entry['p99_ms_median']:.1f} ms backup s {entry['backup_seconds']}"
            )
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        cluster.destroy()
        subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    main()
