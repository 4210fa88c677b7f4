"""Shared bench helpers: child processes timed with their own peak RSS."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


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
