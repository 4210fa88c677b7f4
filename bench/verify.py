"""ebk verify (restore level) vs a plain ebk restore of the same physical backup.

Usage: .venv/bin/python bench/verify.py [--scale 136] [--rounds 1]

One pgbench database (scale 136 is about 2 GiB) backed up once; then, rounds
interleaved: `ebk restore latest --to DIR` (decrypt + extract + pg_verifybackup)
and `ebk verify latest --json` (the same restore into the scratch directory,
pg_verifybackup, starting PostgreSQL, pg_amcheck, fingerprints).  The verify
time is split with the timings it reports (fetch+decrypt, PostgreSQL start,
checks); peak RSS is ebk's own (wait4: ebk and the tools it waited for, not
the scratch server, which pg_ctl detaches).  The backup's own time (fingerprints
included) is printed too; fingerprinting's share is not separated here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Sample, load_pgbench, median, timed

from tests.support.postgres import init_cluster, make_postgres_dir


def timed_json(argv: list[str]) -> tuple[Sample, object]:
    """Like common.timed, keeping stdout (the JSON result); logs are at warning level."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[-3:]} failed: {err[-2000:]}")
    return Sample(elapsed, usage.ru_maxrss / 1024), json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=136)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    cluster = init_cluster()
    work = Path(tempfile.mkdtemp(prefix="ebk-verify-bench-"))  # repository and key file
    scratch = make_postgres_dir("ebk-verify-scratch-")  # the server (postgres) enters it
    try:
        db_bytes = load_pgbench(cluster, args.scale)
        config = work / "ebk.toml"
        config.write_text(
            f'[repository]\nurl = "file://{work}/repo"\n[keys]\nkeyfile = "{work}/kek.json"\n'
            f"{cluster.config_section()}\n[backup]\ncompression_level = 1\n"
            f'[preflight]\npolicy = "off"\n[log]\nlevel = "warning"\n'
            f'[verify]\nscratch_dir = "{scratch}"\n'
        )
        ebk = [sys.executable, "-m", "ebk", "--config", str(config)]
        timed([*ebk, "init"])
        backup = timed([*ebk, "backup", "--type", "physical"])

        restores: list[Sample] = []
        verifies: list[Sample] = []
        splits: list[dict[str, float]] = []
        for i in range(args.rounds):
            target = work / f"restore-{i}"
            restores.append(timed([*ebk, "restore", "latest", "--to", str(target)]))
            shutil.rmtree(target)
            sample, doc = timed_json([*ebk, "verify", "latest", "--json"])
            verifies.append(sample)
            assert isinstance(doc, list) and doc[0]["passed"], doc
            splits.append(doc[0]["timings"])
        base = median([s.seconds for s in restores])
        v = median([s.seconds for s in verifies])
        print(
            f"database: {db_bytes / 2**20:.0f} MiB (pgbench scale {args.scale}), "
            f"{args.rounds} round(s); backup (with fingerprints) {backup.seconds:.1f} s"
        )
        print(
            f"ebk restore: median {base:.1f} s {[round(s.seconds, 1) for s in restores]}  "
            f"peak RSS {max(s.peak_rss_mib for s in restores):.0f} MiB"
        )
        print(
            f"ebk verify : median {v:.1f} s {[round(s.seconds, 1) for s in verifies]}  "
            f"ratio {v / base:.2f}  peak RSS {max(s.peak_rss_mib for s in verifies):.0f} MiB"
        )
        for key in ("fetch_decrypt", "pg_verifybackup", "postgres_start", "checks"):
            print(f"  {key:15}: median {median([s.get(key, 0.0) for s in splits]):.2f} s")
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
