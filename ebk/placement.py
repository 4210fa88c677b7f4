"""Where a physical backup's zstd runs: in PostgreSQL's walsender or in ebk.

Server-side compression puts a busy core into the database's own process
tree, at the database's priority, on the database host; client-side
compression runs in ebk, which can run elsewhere or at a lower priority
(systemd/ebk.service sets Nice= and CPUWeight=).  ``auto`` decides per backup:

* ebk reaches the server over the network (not a Unix socket, not loopback):
  client, so the compression leaves the database host;
* same host, at least SERVER_MIN_CPUS cores and a 1-minute load average below
  half of them: server (a core is free, and the socket carries less data);
* otherwise client: a small or busy host keeps the database's priority.

The measurements behind the rule are in docs/performance.md ("Backup impact").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ebk.config import BackupConfig, PostgresConfig

SERVER_MIN_CPUS = 4
MAX_LOAD_PER_CPU = 0.5
LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Placement:
    location: str  # "server", "client" or "none" (compression off)
    reason: str


def is_local(pg: PostgresConfig) -> bool:
    return pg.host.startswith("/") or pg.host in LOCAL_HOSTS


def choose(
    backup: BackupConfig,
    pg: PostgresConfig,
    *,
    cpus: int | None = None,
    load1: Callable[[], float] = lambda: os.getloadavg()[0],
) -> Placement:
    if backup.compression_level == 0:
        return Placement("none", "backup.compression_level = 0")
    if backup.compression_location != "auto":
        return Placement(backup.compression_location, "backup.compression_location")
    if not is_local(pg):
        return Placement("client", f"auto: the database host {pg.host} is remote")
    cores = cpus or os.cpu_count() or 1
    load = load1()
    if cores >= SERVER_MIN_CPUS and load < cores * MAX_LOAD_PER_CPU:
        return Placement("server", f"auto: {cores} CPUs, load {load:.1f}")
    return Placement(
        "client",
        f"auto: {cores} CPUs, load {load:.1f} (server needs >= "
        f"{SERVER_MIN_CPUS} CPUs and load < {MAX_LOAD_PER_CPU:g} per CPU)",
    )
