"""WAL archiving: ebk wal-push (daemon socket, and direct) vs `pgbackrest archive-push` (async).

Usage (root): .venv/bin/python bench/wal.py [--segments 12] [--duration 30] [--clients 4]
              [--tools ebk,pgbackrest,ebk-stream] [--skip-latency] [--json OUT]

Part 1, push latency per segment: real WAL segments (from pgbench) pushed one
command at a time, interleaved per segment: `ebk wal-push` through the daemon
socket (the stdlib client, Debian's python3), `ebk wal-push --direct` (full
ebk start-up, one WAL-key unwrap per process) and `pgbackrest archive-push`
(synchronous here, see below; zstd level 3, aes-256-cbc repository).  All three
write to local repositories on the same disk; zstd level 3 for everyone.

Part 2, sustained archiving under pgbench: PostgreSQL 15 (fsync on,
synchronous_commit off, max_wal_size 1GB) runs pgbench (--workload bulk:
2000-row INSERTs, WAL-heavy; tpcb: pgbench -N) for --duration seconds
with archive_command = each tool in turn; reported: WAL generated
(MiB/s), per-segment archive lag (from the moment PostgreSQL finished the
segment to the moment pg_stat_archiver shows it archived; p50/p99/max), and
the segments still unarchived at the end.  ebk-stream: the daemon's streamer
(wal.mode = "stream", no archive_command); its lag is per WAL position: from
the moment pg_current_wal_lsn() passed it (sampled every 0.2 s) to the moment
the streamer had it durable (a complete segment or a stored partial).  KMS
calls: key-provider calls the ebk daemon made (WAL keys are unwrapped once per rotation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_pgbench, pgbench_env

from ebk.app.wal import WalKeyring
from ebk.app.walstream import WalStreamer
from ebk.bench.stats import percentile
from ebk.config import load_config
from ebk.daemon.walsocket import WalArchiver
from ebk.postgres.walstream import parse_lsn
from ebk.runtime import Runtime
from tests.support.ebkenv import make_env
from tests.support.postgres import (
    PG_BIN,
    REPO,
    PgCluster,
    give_to_postgres,
    init_cluster,
    make_postgres_dir,
)

VENV_EBK = Path(sys.executable).parent / "ebk"
CLIENT_FILES = ("__init__.py", "__main__.py", "entry.py", "walclient.py")


def client_command(base: Path, config: Path) -> str:
    pkg = base / "client" / "ebk"
    pkg.mkdir(parents=True)
    for name in CLIENT_FILES:
        shutil.copy(REPO / "ebk" / name, pkg / name)
    os.system(f"chmod -R a+rX {base / 'client'}")
    return f"PYTHONPATH={base / 'client'} /usr/bin/python3 -m ebk --config {config}"


def pgbackrest_setup(base: Path, cluster: PgCluster, *, asynchronous: bool = True) -> Path:
    repo, spool, logs = base / "pgbr-repo", base / "pgbr-spool", base / "pgbr-log"
    for d in (repo, spool, logs):
        d.mkdir()
        give_to_postgres(d)
    conf = base / "pgbackrest.conf"
    conf.write_text(f"""[global]
repo1-path={repo}
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-only-passphrase
compress-type=zst
compress-level=3
archive-async={"y" if asynchronous else "n"}
spool-path={spool}
process-max=2
log-path={logs}
lock-path={logs}
log-level-console=warn
archive-check=n

[bench]
pg1-path={cluster.data_dir}
pg1-port={cluster.port}
pg1-socket-path={cluster.socket_dir}
""")
    conf.chmod(0o644)
    subprocess.run(
        ["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={conf}", "--stanza=bench",
         "stanza-create"],
        check=True, capture_output=True,
    )  # fmt: skip
    return conf


def sample_segments(cluster: PgCluster, out: Path, count: int) -> list[Path]:
    """Real, full WAL segments (pgbench TPC-B and bulk inserts), copied out of pg_wal."""
    cluster.psql("ALTER SYSTEM SET max_wal_size = '4GB'")
    cluster.psql("SELECT pg_reload_conf()")
    cluster.psql("CHECKPOINT")
    first = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    start = cluster.psql("SELECT pg_current_wal_lsn()")
    need = (count + 2) * 16 * 1024 * 1024
    cluster.psql("CREATE TABLE IF NOT EXISTS sample (id int, v text)")
    while int(cluster.psql(f"SELECT pg_current_wal_lsn() - '{start}'::pg_lsn")) < need:
        # pgbench updates interleaved with row inserts: heap, index and commit records
        subprocess.run(
            [str(PG_BIN / "pgbench"), "-c", "2", "-t", "500", "-N", "postgres"],
            env=pgbench_env(cluster.port), check=True, capture_output=True,
        )  # fmt: skip
        cluster.psql(
            "INSERT INTO sample SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 40000) g"
        )
    last = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    wal = sorted(
        p
        for p in (cluster.data_dir / "pg_wal").iterdir()
        if len(p.name) == 24 and first < p.name < last  # complete, not recycled ahead
    )
    out.mkdir()
    picked = []
    for i, path in enumerate(wal[:count]):
        # distinct timeline 9 names, so that no tool sees the cluster's own segments
        dest = out / f"00000009{i:016X}"
        shutil.copy(path, dest)
        picked.append(dest)
    os.system(f"chmod -R a+rX {out}")
    return picked


def timed(argv: list[str], *, user: str | None = None) -> float:
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return elapsed


def latency_part(base: Path, cluster: PgCluster, segments: list[Path]) -> dict[str, object]:
    fast_env = make_env(base / "fast", None, extra=_wal_toml(base / "fast"))
    direct_env = make_env(base / "direct", None)
    fast_env.root.chmod(0o755)
    runtime = Runtime(load_config(fast_env.config_path))
    archiver = WalArchiver(lambda: runtime, base / "fast" / "wal.sock")
    archiver.server.start()
    client = client_command(base / "lat", fast_env.config_path)
    # Sync here: async archive-push pushes what pg_wal/archive_status lists, and these
    # sample segments are not the cluster's own; part 2 measures the async mode.
    conf = pgbackrest_setup(base, cluster, asynchronous=False)
    pgbr_dir = base / "pgbr-segs"
    pgbr_dir.mkdir()
    give_to_postgres(pgbr_dir)
    times: dict[str, list[float]] = {"ebk_daemon": [], "ebk_direct": [], "pgbackrest": []}
    try:
        for seg in segments:
            times["ebk_daemon"].append(
                timed(["sh", "-c", f"{client} wal-push {seg}"], user="postgres")
            )
            times["ebk_direct"].append(
                timed([str(VENV_EBK), "--config", str(direct_env.config_path), "wal-push",
                       "--direct", str(seg)])
            )  # fmt: skip
            # pgbackrest reads pg_wal-relative paths; a copy owned by postgres
            dest = pgbr_dir / seg.name
            shutil.copy(seg, dest)
            give_to_postgres(dest)
            times["pgbackrest"].append(
                timed(["pgbackrest", f"--config={conf}", "--stanza=bench", "archive-push",
                       str(dest)], user="postgres")
            )  # fmt: skip
        calls = archiver.keyring().calls
        inside = sorted(archiver.server.stats.latencies)
    finally:
        archiver.close()
    return {
        name: {
            "p50_ms": round(percentile(sorted(v), 50) * 1000, 1),
            "p99_ms": round(percentile(sorted(v), 99) * 1000, 1),
            "max_ms": round(max(v) * 1000, 1),
            "n": len(v),
        }
        for name, v in times.items()
    } | {
        "ebk_daemon_key_provider_calls": calls,
        # the daemon's own share: read, compress, encrypt, durable put (no client start-up)
        "ebk_daemon_inside_p50_ms": round(percentile(inside, 50) * 1000, 1),
        "ebk_daemon_inside_p99_ms": round(percentile(inside, 99) * 1000, 1),
    }


def _wal_toml(root: Path) -> str:
    return f'[wal]\nsocket = "{root}/wal.sock"\nsocket_group = "postgres"\n'


class LagWatcher(threading.Thread):
    """Per-segment archive lag from pg_stat_archiver, sampled every 0.2 s."""

    def __init__(self, cluster: PgCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.finished: dict[str, float] = {}
        self.archived: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            row = self.cluster.psql(
                "SELECT pg_walfile_name(pg_current_wal_lsn()), "
                "coalesce(last_archived_wal, '') FROM pg_stat_archiver"
            ).split("|")
            now = time.monotonic()
            current, archived = row[0], row[1][:24]
            for name in _before(current, 64):
                self.finished.setdefault(name, now)
            if archived:
                for name in [archived, *_before(archived, 64)]:
                    self.archived.setdefault(name, now)
            time.sleep(0.2)

    def lags(self) -> list[float]:
        return [self.archived[n] - t for n, t in self.finished.items() if n in self.archived]


class StreamLagWatcher(threading.Thread):
    """Per-position durability lag of the streamer, sampled every 0.2 s."""

    def __init__(self, cluster: PgCluster, streamer: WalStreamer) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.streamer = streamer
        self.written: list[tuple[float, int]] = []
        self.durable: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            lsn = parse_lsn(self.cluster.psql("SELECT pg_current_wal_lsn()"))
            now = time.monotonic()
            self.written.append((now, lsn))
            with self.streamer.stats.lock:
                self.durable.append((now, self.streamer.stats.flushed))
            time.sleep(0.2)

    def lags(self) -> list[float]:
        out = []
        for t, lsn in self.written:
            done = next((d for d, flushed in self.durable if d >= t and flushed >= lsn), None)
            if done is not None:
                out.append(done - t)
        return out


def stream_part(
    base: Path, duration: int, clients: int, scale: int, bulk: bool
) -> dict[str, object]:
    cluster = init_cluster(make_postgres_dir("ebk-bench-wal-"))
    streamer = None
    try:
        with open(cluster.data_dir / "postgresql.conf", "a") as conf:
            conf.write("fsync = on\nsynchronous_commit = off\nmax_wal_size = 1GB\n")
        cluster.stop()
        cluster.start()
        root = base / "sustained-ebk-stream"
        env = make_env(root, cluster, extra='[wal]\nmode = "stream"\n')
        runtime = Runtime(load_config(env.config_path))
        keyring = WalKeyring(runtime)
        streamer = WalStreamer(lambda: runtime, lambda: keyring)
        streamer.start()
        while not streamer.stats.connected:
            time.sleep(0.1)
        load_pgbench(cluster, scale)
        start_lsn = cluster.psql("SELECT pg_current_wal_lsn()")
        watcher = StreamLagWatcher(cluster, streamer)
        watcher.start()
        t0 = time.monotonic()
        workload = ["-N"]
        if bulk:
            cluster.psql("CREATE TABLE bulk (id int, v text)")
            script = root / "bulk.sql"
            script.write_text(
                "INSERT INTO bulk SELECT g, repeat(md5(g::text), 6) "
                "FROM generate_series(1, 2000) g;\n"
            )
            script.chmod(0o644)
            workload = ["-n", "-f", str(script)]
        subprocess.run(
            [str(PG_BIN / "pgbench"), "-c", str(clients), "-j", "2", "-T", str(duration),
             *workload, "postgres"],
            env=pgbench_env(cluster.port), check=True, capture_output=True,
        )  # fmt: skip
        elapsed = time.monotonic() - t0
        wal_bytes = int(cluster.psql(f"SELECT pg_current_wal_lsn() - '{start_lsn}'::pg_lsn"))
        time.sleep(5)
        watcher.stop.set()
        watcher.join()
        lags = sorted(watcher.lags())
        stats = streamer.stats
        return {
            "wal_mib_per_s": round(wal_bytes / elapsed / 2**20, 1),
            "positions": len(lags),
            "unmatched_positions": len(watcher.written) - len(lags),
            "lag_p50_s": round(percentile(lags, 50), 2) if lags else None,
            "lag_p99_s": round(percentile(lags, 99), 2) if lags else None,
            "lag_max_s": round(lags[-1], 2) if lags else None,
            "segments": stats.segments,
            "partials": stats.partials,
            "partial_mib": round(stats.partial_bytes / 2**20, 1),
            "stream_errors": stats.last_error,
            "key_provider_calls": keyring.calls,
        }
    finally:
        if streamer is not None:
            streamer.stop()
        cluster.destroy()


def _before(name: str, count: int) -> list[str]:
    tli, seg = name[:8], int(name[8:], 16)
    out = []
    for i in range(1, count + 1):
        n = seg - i
        if n < 0:
            break
        out.append(f"{tli}{(n // 256):08X}{(n % 256):08X}")
    return out


def sustained_part(
    base: Path, tool: str, duration: int, clients: int, scale: int, bulk: bool
) -> dict[str, object]:
    cluster = init_cluster(make_postgres_dir("ebk-bench-wal-"))
    archiver = None
    try:
        with open(cluster.data_dir / "postgresql.conf", "a") as conf:
            conf.write("fsync = on\nsynchronous_commit = off\nmax_wal_size = 1GB\n"
                       "archive_mode = on\n")  # fmt: skip
        root = base / f"sustained-{tool}"
        if tool == "ebk":
            env = make_env(root, None, extra=_wal_toml(root))
            root.chmod(0o755)
            runtime = Runtime(load_config(env.config_path))
            archiver = WalArchiver(lambda: runtime, root / "wal.sock")
            archiver.server.start()
            command = f"{client_command(root, env.config_path)} wal-push %p"
        else:
            root.mkdir(parents=True)
            conf_path = pgbackrest_setup(root, cluster)
            command = f"pgbackrest --config={conf_path} --stanza=bench archive-push %p"
        cluster.psql(f"ALTER SYSTEM SET archive_command = '{command}'")
        cluster.stop()
        cluster.start()
        if tool != "ebk":
            subprocess.run(
                ["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={conf_path}",
                 "--stanza=bench", "stanza-create"], check=True, capture_output=True,
            )  # fmt: skip
        load_pgbench(cluster, scale)
        start_lsn = cluster.psql("SELECT pg_current_wal_lsn()")
        watcher = LagWatcher(cluster)
        watcher.start()
        t0 = time.monotonic()
        workload = ["-N"]
        if bulk:
            cluster.psql("CREATE TABLE bulk (id int, v text)")
            script = root / "bulk.sql"
            script.write_text(
                "INSERT INTO bulk SELECT g, repeat(md5(g::text), 6) "
                "FROM generate_series(1, 2000) g;\n"
            )
            script.chmod(0o644)
            workload = ["-n", "-f", str(script)]
        subprocess.run(
            [str(PG_BIN / "pgbench"), "-c", str(clients), "-j", "2", "-T", str(duration),
             *workload, "postgres"],
            env=pgbench_env(cluster.port), check=True, capture_output=True,
        )  # fmt: skip
        elapsed = time.monotonic() - t0
        wal_bytes = int(cluster.psql(f"SELECT pg_current_wal_lsn() - '{start_lsn}'::pg_lsn"))
        time.sleep(5)  # let the archiver finish what pgbench left
        watcher.stop.set()
        watcher.join()
        lags = sorted(watcher.lags())
        pending = cluster.psql(
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
        )
        failed = cluster.psql("SELECT failed_count FROM pg_stat_archiver")
        result: dict[str, object] = {
            "wal_mib_per_s": round(wal_bytes / elapsed / 2**20, 1),
            "segments": len(lags),
            "lag_p50_s": round(percentile(lags, 50), 2) if lags else None,
            "lag_p99_s": round(percentile(lags, 99), 2) if lags else None,
            "lag_max_s": round(lags[-1], 2) if lags else None,
            "unarchived_after_5s": int(pending),
            "archive_failures": int(failed),
        }
        if archiver is not None:
            result["key_provider_calls"] = archiver.keyring().calls
        return result
    finally:
        if archiver is not None:
            archiver.close()
        cluster.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=12)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--workload",
        choices=["bulk", "tpcb"],
        default="bulk",
        help="bulk: INSERT 2000 rows of 200 B per transaction (WAL-heavy); tpcb: pgbench -N",
    )
    parser.add_argument("--tools", default="ebk,pgbackrest")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tools = args.tools.split(",")
    base = Path(tempfile.mkdtemp(prefix="ebk-bench-wal-"))
    base.chmod(0o755)
    results: dict[str, object] = {}
    if not args.skip_latency:
        cluster = init_cluster(make_postgres_dir("ebk-bench-wal-src-"))
        try:
            load_pgbench(cluster, 5)
            segments = sample_segments(cluster, base / "segments", args.segments)
            results["latency"] = latency_part(base, cluster, segments)
        finally:
            cluster.destroy()
        print(json.dumps(results, indent=2), flush=True)
    sustained: dict[str, list[dict[str, object]]] = {tool: [] for tool in tools}
    for r in range(args.rounds):
        order = tools if r % 2 == 0 else tools[::-1]
        for tool in order:
            if tool == "ebk-stream":
                sustained[tool].append(
                    stream_part(
                        base / f"r{r}",
                        args.duration,
                        args.clients,
                        args.scale,
                        args.workload == "bulk",
                    )
                )
                print(tool, json.dumps(sustained[tool][-1]), flush=True)
                continue
            sustained[tool].append(
                sustained_part(
                    base / f"r{r}",
                    tool,
                    args.duration,
                    args.clients,
                    args.scale,
                    args.workload == "bulk",
                )
            )
            print(tool, json.dumps(sustained[tool][-1]), flush=True)
    results["sustained"] = sustained
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
