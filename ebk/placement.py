"""Where a physical backup's zstd runs: in PostgreSQL's walsender or in ebk.

Server-side compression makes the database host spend a core on zstd but
sends ~1/10 of the bytes over the socket and leaves ebk only the encryption;
client-side compression sends the plain archives and compresses in ebk.
``auto`` decides per backup:

* ebk reaches the server over the network (not a Unix socket, not loopback):
  client, so the compression leaves the database host (the network carries
  the uncompressed archives; backup.max_rate caps them);
* ebk runs on the database host: server.  Both placements then spend the same
  host's cores; measured on a 2-core host (docs/performance.md, "Backup
  impact") they cost the database the same while the backup runs, and the
  server-side backup finishes ~1.5 x sooner.  The host's core count and load
  therefore do not change the choice; backup.max_rate is the control that
  keeps the cost under a target.
"""

from __future__ import annotations

from dataclasses import dataclass

from ebk.config import BackupConfig, PostgresConfig

LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Placement:
    location: str  # "server", "client" or "none" (compression off)
    reason: str


def is_local(pg: PostgresConfig) -> bool:
    return pg.host.startswith("/") or pg.host in LOCAL_HOSTS


def choose(backup: BackupConfig, pg: PostgresConfig) -> Placement:
    if backup.compression_level == 0:
        return Placement("none", "backup.compression_level = 0")
    if backup.compression_location != "auto":
        return Placement(backup.compression_location, "backup.compression_location")
    if is_local(pg):
        return Placement("server", f"auto: the database runs on this host ({pg.host or 'socket'})")
    return Placement("client", f"auto: the database host {pg.host} is remote")
