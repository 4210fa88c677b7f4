"""Shared bench helpers: child processes timed with their own peak RSS."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ebk.manifest import Manifest, StoredObject  # noqa: E402
from tests.support.postgres import PG_BIN, PgCluster  # noqa: E402


@dataclass
class Sample:
    seconds: float
    peak_rss_mib: float
    cpu_seconds: float = 0.0


def timed(argv: list[str], env: dict[str, str] | None = None) -> Sample:
    """Run argv; wall time and the child's own peak RSS (wait4, not RUSAGE_CHILDREN)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {stderr[-2000:]}")
    return Sample(elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


def median(values: list[float]) -> float:
    return statistics.median(values)


def pgbench_env(port: int) -> dict[str, str]:
    """libpq environment for the bench cluster on 127.0.0.1."""
    return dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER="postgres")


def load_pgbench(cluster: PgCluster, scale: int) -> int:
    """pgbench -i at ``scale``, checkpointed; returns the database size in bytes."""
    subprocess.run(
        [str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale), "postgres"],
        env=pgbench_env(cluster.port),
        check=True,
        capture_output=True,
    )
    cluster.psql("CHECKPOINT")
    return int(cluster.psql("SELECT pg_database_size('postgres')"))


def pg_basebackup_argv(target: Path, compress: str) -> list[str]:
    """The baseline: tar format, WAL inside the tar (as ebk does), fast checkpoint."""
    return [
        str(PG_BIN / "pg_basebackup"),
        "-D",
        str(target),
        "-Ft",
        "-X",
        "fetch",
        f"--compress={compress}",
        "-c",
        "fast",
    ]


def sample_manifest(backup_id: str, when: datetime, *, kind: str = "physical") -> Manifest:
    """A typical unsealed manifest (two objects), for the listing and signing benches."""
    return Manifest(
        backup_id=backup_id,
        kind=kind,
        ebk_version="bench",
        system_identifier="7713232264135747606",
        server_version="15.18",
        server_version_num=150018,
        start_time=when.isoformat(timespec="microseconds"),
        stop_time=(when + timedelta(minutes=3)).isoformat(),
        dek_id="dek-0",
        key_slots=["keyfile/kek-bench"],
        objects=[
            StoredObject("base.tar.ebk", "base", 10**9, 10**8, "ab" * 32),
            StoredObject("backup_manifest.ebk", "backup_manifest", 10**5, 10**4, "cd" * 32),
        ],
        start_lsn="0/2000028",
        stop_lsn="0/2000100",
        timeline=1,
        source_size=10**9,
    )
