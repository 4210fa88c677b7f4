"""The daemon's wal-push socket: archive segments for `ebk wal-push` clients.

A Unix stream socket, mode 0600 (only the daemon's user, who must also be
the user PostgreSQL runs archive_command as, can connect).  Each connection
carries one ``PUSH <path>`` (protocol: ebk.walclient); the answer is sent
only after the object is durable in the repository.  The WAL data key stays
unwrapped in this process's memory, so a segment costs no key-provider call.
"""

from __future__ import annotations

import grp
import io
import os
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ebk.app.wal import (
    PushResult,
    WalKeyring,
    fetch_segment,
    next_segments,
    open_archived,
    push_wal_bytes,
    read_wal_fd,
    segment_number,
)
from ebk.app.walstream import WalStreamer
from ebk.config import Config, WalConfig, parse_duration
from ebk.errors import ConfigError, EbkError, ObjectNotFound
from ebk.format.walobject import SEGMENT, WalFile, is_wal_name
from ebk.postgres.connection import connect
from ebk.runtime import Runtime
from ebk.walclient import SOCKET_NAME

log = structlog.get_logger("ebk.daemon.wal")
MAX_REQUEST = 8192


@dataclass
class WalStats:
    """What /metrics and /readyz say about archiving (updated by every push)."""

    pushed: int = 0
    bytes: int = 0
    failures: int = 0
    last_name: str = ""
    last_time: float = 0.0
    last_latency: float = 0.0
    latencies: list[float] = field(default_factory=list)  # the last 1000 pushes
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, result: PushResult, latency: float) -> None:
        with self.lock:
            self.pushed += 1
            self.bytes += result.size
            if result.name > self.last_name or not self.last_name:
                self.last_name = result.name
            self.last_time = time.time()
            self.last_latency = latency
            self.latencies = [*self.latencies[-999:], latency]

    def failed(self) -> None:
        with self.lock:
            self.failures += 1


def socket_path_for(config: WalConfig, state_dir: str) -> Path:
    return Path(config.socket) if config.socket else Path(state_dir) / SOCKET_NAME


class _Handler(socketserver.StreamRequestHandler):
    server: WalSocketServer

    def handle(self) -> None:
        # One message: the request line, and for PUSH the WAL file's open descriptor.
        raw, fds, _, _ = socket.recv_fds(self.request, MAX_REQUEST, 2)
        verb, _, arg = raw.decode("utf-8", "replace").rstrip("\n").partition(" ")
        if verb == "PUSH" and arg.startswith("/") and len(fds) == 1:
            uid = struct.unpack(
                "3i", self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            )[1]
            self.wfile.write(self.server.push(Path(arg), fds[0], uid).encode() + b"\n")
            return
        for fd in fds:
            os.close(fd)
        if verb == "FETCH" and is_wal_name(arg):
            self.server.fetch(arg, self.wfile)
        else:
            self.wfile.write(
                b"ERR 2 expected: PUSH <absolute path> (with its descriptor) or FETCH <name>\n"
            )


class WalSocketServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(
        self, path: Path, keyring: Callable[[], WalKeyring], config: Callable[[], WalConfig]
    ) -> None:
        self.path = path
        self._keyring = keyring
        self._config = config
        self.stats = WalStats()
        self._prefetch = MemoryPrefetch(lambda: config().prefetch)
        self._ahead = PushAhead()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            path.unlink()  # a stale socket of a daemon that died (the state dir is ours)
        old = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        group = config().socket_group
        if group:
            try:
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
            except (KeyError, OSError) as exc:
                self.server_close()
                path.unlink(missing_ok=True)
                raise ConfigError(
                    f"wal.socket_group = {group!r}: cannot give the socket to it ({exc})",
                    hint="name an existing group the daemon's user is a member of",
                ) from None
            os.chmod(path, 0o660)
        self._thread = threading.Thread(target=self.serve_forever, name="wal-socket", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("wal-push socket listening", socket=str(self.path))

    def push(self, path: Path, fd: int, uid: int) -> str:
        """Archive the file the client opened (``fd``); ``uid``: the client's user."""
        start = time.perf_counter()
        try:
            data = read_wal_fd(fd)  # closes fd
            result = self._ahead.push(path, data, uid, self._keyring(), self._config())
        except EbkError as exc:
            self.stats.failed()
            log.error("wal-push failed", wal=path.name, error=exc.message)
            return f"ERR {exc.exit_code} {exc.message}".replace("\n", " ")
        except Exception as exc:  # the client must get an answer
            self.stats.failed()
            log.exception("wal-push failed unexpectedly", wal=path.name)
            return f"ERR 1 unexpected error: {exc}".replace("\n", " ")
        latency = time.perf_counter() - start
        self.stats.record(result, latency)
        log.debug("archived", wal=result.name, seconds=round(latency, 4), already=result.already)
        return "OK identical" if result.already else "OK archived"

    def fetch(self, name: str, out: io.BufferedIOBase) -> None:
        """Send the authenticated file (or MISSING / ERR); prefetch the next segments."""
        try:
            wal = self._prefetch.get(self._keyring(), name)
        except ObjectNotFound:
            out.write(b"MISSING\n")
            return
        except EbkError as exc:
            self.stats.failed()
            log.error("wal-fetch failed", wal=name, error=exc.message)
            out.write(f"ERR {exc.exit_code} {exc.message}".replace("\n", " ").encode() + b"\n")
            return
        out.write(f"OK {len(wal.data)}\n".encode())
        out.write(wal.data)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.path.unlink(missing_ok=True)


class PushAhead:
    """The asynchronous queue: archive the segments PostgreSQL will ask for next.

    PostgreSQL's archiver runs archive_command for one segment at a time, so
    one slow push delays every later one.  When it asks for a segment, the
    segments its pg_wal/archive_status marks ready after it (complete, and
    immutable until archived) are pushed concurrently by ``wal.push_ahead``
    workers; the request for one of them then waits only for its own push.
    Nothing is acknowledged before its push returned, so "durable before
    acknowledged" holds; a push ahead that failed is retried on request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Future[PushResult]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def push(
        self, path: Path, data: bytes, uid: int, keyring: WalKeyring, config: WalConfig
    ) -> PushResult:
        with self._lock:
            future = self._pending.pop(str(path), None)
        result: PushResult | None = None
        if future is not None:
            try:
                result = future.result()
            except (EbkError, OSError) as exc:
                log.warning("push ahead failed; pushing again", wal=path.name, error=str(exc))
        if result is None:
            result = push_wal_bytes(keyring, path.name, data, config)
        self._schedule(path, uid, keyring, config)
        return result

    def _schedule(self, path: Path, uid: int, keyring: WalKeyring, config: WalConfig) -> None:
        if config.push_ahead <= 0 or not SEGMENT.match(path.name):
            return
        try:
            ready = sorted(
                e.name.removesuffix(".ready")
                for e in os.scandir(path.parent / "archive_status")
                if e.name.endswith(".ready") and e.name.removesuffix(".ready") > path.name
            )
        except OSError:
            return
        wanted = [str(path.parent / n) for n in ready if SEGMENT.match(n)][: config.push_ahead]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=max(1, config.push_ahead), thread_name_prefix="wal-push-ahead"
                )
            for stale in [p for p in self._pending if p <= str(path)]:
                self._pending.pop(stale)
            for name in wanted:
                if name not in self._pending and len(self._pending) < 2 * config.push_ahead:
                    self._pending[name] = self._pool.submit(
                        _push_owned, Path(name), uid, keyring, config
                    )


def _push_owned(path: Path, uid: int, keyring: WalKeyring, config: WalConfig) -> PushResult:
    """Push a ready segment ahead: only a regular file the client's user owns (the daemon
    may run with more rights than its client; a symlink or a foreign file is never read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    info = os.fstat(fd)
    if info.st_uid != uid or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError(f"{path} is not a regular file of the client's user; not pushed ahead")
    return push_wal_bytes(keyring, path.name, read_wal_fd(fd), config)


class MemoryPrefetch:
    """The next segments' objects (still encrypted), fetched ahead for the next FETCH.

    At most ``depth`` objects are held; every use authenticates like a fresh
    download (a copy that fails is fetched again).
    """

    def __init__(self, depth: Callable[[], int]) -> None:
        self._depth = depth
        self._lock = threading.Lock()
        self._pending: dict[str, Future[bytes | None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="wal-prefetch")

    def get(self, keyring: WalKeyring, name: str) -> WalFile:
        with self._lock:
            future = self._pending.pop(name, None)
        wal: WalFile | None = None
        if future is not None:
            try:
                sealed = future.result()
                if sealed is not None:
                    wal = open_archived(keyring, name, sealed)
            except EbkError as exc:
                log.warning("prefetched copy unusable; fetching again", wal=name, error=exc.message)
        if wal is None:
            wal = fetch_segment(keyring, name)
        self._ahead(keyring, name, len(wal.data))
        return wal

    def _ahead(self, keyring: WalKeyring, name: str, segment_size: int) -> None:
        wanted = next_segments(name, segment_size, self._depth())
        with self._lock:
            for stale in [n for n in self._pending if n not in wanted]:
                self._pending.pop(stale).cancel()
            for n in wanted:
                if n not in self._pending:
                    self._pending[n] = self._pool.submit(_read_or_none, keyring, n)


def _read_or_none(keyring: WalKeyring, name: str) -> bytes | None:
    try:
        return keyring.store.read(name)
    except ObjectNotFound:
        return None


def probe(path: Path) -> bool:
    """True when a daemon answers on the socket."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
    except OSError:
        return False
    finally:
        client.close()
    return True


class WalArchiver:
    """The daemon's archiving side: the socket, its keyring per configuration, its health."""

    def __init__(self, runtime: Callable[[], Runtime | None], path: Path) -> None:
        self._runtime = runtime
        self._keyrings: dict[int, WalKeyring] = {}
        self._lock = threading.Lock()
        self.server = WalSocketServer(path, self.keyring, self.config)
        self.stream: WalStreamer | None = None  # wal.mode = "stream" (ebk.app.walstream)

    def config(self) -> WalConfig:
        runtime = self._runtime()
        return runtime.config.wal if runtime is not None else WalConfig()

    def keyring(self) -> WalKeyring:
        """One keyring per loaded configuration (a reload may change keys or repository)."""
        runtime = self._runtime()
        if runtime is None:
            raise EbkError("the daemon is starting; try again")
        with self._lock:
            keyring = self._keyrings.get(id(runtime))
            if keyring is None:
                keyring = WalKeyring(runtime)
                self._keyrings = {id(runtime): keyring}
            return keyring

    def lag(self) -> tuple[float, int] | None:
        """(seconds since the last archive, bytes of completed WAL not archived), if known."""
        runtime = self._runtime()
        stats = self.server.stats
        if runtime is None or not stats.last_name:
            return None
        try:
            with connect(runtime.config.postgres) as conn:
                row = conn.execute(
                    "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, setting::bigint "
                    "FROM pg_settings WHERE name = 'wal_segment_size'"
                ).fetchone()
        except (EbkError, psycopg.Error):
            return None
        if row is None:
            return None
        current, seg_size = int(row[0]), int(row[1])
        archived_end = (segment_number(stats.last_name[:24], seg_size) + 1) * seg_size
        current_start = current - current % seg_size
        return time.time() - stats.last_time, max(0, current_start - archived_end)

    def slots(self) -> list[tuple[str, bool, str, int]]:
        """(name, active, wal_status, retained bytes) of the cluster's replication slots."""
        runtime = self._runtime()
        if runtime is None:
            return []
        try:
            with connect(runtime.config.postgres) as conn:
                rows = conn.execute(
                    "SELECT slot_name, active, coalesce(wal_status, ''), "
                    "coalesce(pg_current_wal_lsn() - restart_lsn, 0)::bigint "
                    "FROM pg_replication_slots"
                ).fetchall()
        except (EbkError, psycopg.Error):
            return []
        return [(str(r[0]), bool(r[1]), str(r[2]), int(r[3])) for r in rows]

    def not_ready(self) -> str:
        """Why /readyz should fail: archiving behind the RPO, or a slot retaining too much."""
        if self.stream is not None:
            reason = self.stream.not_ready(parse_duration(self.config().rpo, "wal.rpo"))
            if reason:
                return reason
        limit = self.config().max_slot_retained_bytes
        for name, active, status, retained in self.slots():
            if status == "lost" or (limit and retained > limit):
                return (
                    f"replication slot {name} ({'active' if active else 'inactive'}) retains "
                    f"{retained} bytes of WAL (wal_status {status or '?'}; "
                    f"wal.max_slot_retained_bytes = {limit}): a stuck consumer fills pg_wal; "
                    "set max_slot_wal_keep_size, or drop the slot"
                )
        lag = self.lag()
        if lag is None:
            return ""
        seconds, unarchived = lag
        rpo = parse_duration(self.config().rpo, "wal.rpo")
        if unarchived > 0 and seconds > rpo:
            return (
                f"WAL archiving lags: {unarchived} bytes of completed WAL are not archived and "
                f"the last segment was archived {seconds:.0f}s ago (wal.rpo = {rpo:.0f}s)"
            )
        return ""

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
        self.server.close()


class WalCollector(Collector):
    """ebk_wal_* metrics, read at scrape time."""

    def __init__(self, archiver: WalArchiver) -> None:
        self._archiver = archiver

    def collect(self) -> Iterator[Metric]:
        stats = self._archiver.server.stats
        with stats.lock:
            pushed, failures, size = stats.pushed, stats.failures, stats.bytes
            last_name, last_time = stats.last_name, stats.last_time
            latencies = sorted(stats.latencies)
        yield CounterMetricFamily("ebk_wal_pushed", "WAL files archived via the socket", pushed)
        yield CounterMetricFamily("ebk_wal_pushed_bytes", "WAL bytes archived", size)
        yield CounterMetricFamily(
            "ebk_wal_push_failures", "wal-push requests that failed (alert on increase)", failures
        )
        yield GaugeMetricFamily(
            "ebk_wal_last_archived_timestamp_seconds",
            "When the last WAL file was archived",
            last_time,
        )
        info = GaugeMetricFamily(
            "ebk_wal_last_archived", "The last archived WAL file (label)", labels=["wal"]
        )
        info.add_metric([last_name or "none"], 1)
        yield info
        quantiles = GaugeMetricFamily(
            "ebk_wal_push_latency_seconds",
            "Push latency over the last 1000 pushes",
            labels=["quantile"],
        )
        for q in (0.5, 0.99):
            value = latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0
            quantiles.add_metric([str(q)], value)
        yield quantiles
        slots = GaugeMetricFamily(
            "ebk_wal_slot_retained_bytes",
            "WAL each replication slot holds back (pg_current_wal_lsn() - restart_lsn)",
            labels=["slot", "active"],
        )
        for name, active, _status, retained in self._archiver.slots():
            slots.add_metric([name, "1" if active else "0"], retained)
        yield slots
        stream = self._archiver.stream
        if stream is not None:
            yield from _stream_metrics(stream)
        lag = self._archiver.lag()
        if lag is not None:
            yield GaugeMetricFamily(
                "ebk_wal_archive_lag_seconds",
                "Seconds since the last WAL file was archived",
                lag[0],
            )
            yield GaugeMetricFamily(
                "ebk_wal_archive_lag_bytes", "Completed WAL bytes not archived yet", lag[1]
            )


def _stream_metrics(stream: WalStreamer) -> Iterator[Metric]:
    stats = stream.stats
    lag_seconds, lag_bytes = stats.lag_seconds(), stats.lag_bytes()
    with stats.lock:
        up, received, flushed = stats.connected, stats.received_bytes, stats.flushed
        segments, partials, flushed_time = stats.segments, stats.partials, stats.flushed_time
        partial_bytes = stats.partial_bytes
        delays = sorted(stats.delays)
    yield GaugeMetricFamily("ebk_wal_stream_up", "1 while WAL streaming is connected", int(up))
    yield CounterMetricFamily("ebk_wal_stream_received_bytes", "WAL bytes streamed", received)
    yield CounterMetricFamily("ebk_wal_stream_segments", "Whole segments stored", segments)
    yield CounterMetricFamily("ebk_wal_stream_partials", "Partial segments stored", partials)
    yield CounterMetricFamily(
        "ebk_wal_stream_partial_bytes",
        "WAL bytes stored in partials (write amplification of the RPO)",
        partial_bytes,
    )
    yield GaugeMetricFamily(
        "ebk_wal_stream_flushed_lsn_bytes",
        "LSN (as a byte position) up to which streamed WAL is durable (the slot's flush)",
        flushed,
    )
    yield GaugeMetricFamily(
        "ebk_wal_stream_flushed_timestamp_seconds",
        "When streamed WAL last became durable",
        flushed_time,
    )
    yield GaugeMetricFamily(
        "ebk_wal_stream_lag_seconds", "Age of the oldest streamed byte not yet durable", lag_seconds
    )
    yield GaugeMetricFamily(
        "ebk_wal_stream_lag_bytes",
        "WAL the server has that is not durable in the repository",
        lag_bytes,
    )
    quantiles = GaugeMetricFamily(
        "ebk_wal_stream_durable_delay_seconds",
        "Receipt-to-durable delay over the last 1000 stores",
        labels=["quantile"],
    )
    for q in (0.5, 0.99):
        value = delays[min(len(delays) - 1, int(q * len(delays)))] if delays else 0
        quantiles.add_metric([str(q)], value)
    yield quantiles


def start_wal_archiver(
    runtime: Callable[[], Runtime | None], config: Config, registry: CollectorRegistry
) -> WalArchiver | None:
    """Listen for wal-push clients; None (logged) when the socket cannot be created."""
    path = socket_path_for(config.wal, config.daemon.state_dir)
    try:
        archiver = WalArchiver(runtime, path)
    except (OSError, ConfigError) as exc:
        if config.wal.mode == "stream":
            log.error(
                "wal.mode = stream, but WAL STREAMING IS OFF: the daemon's WAL socket cannot "
                "be created; fix wal.socket / wal.socket_group and restart",
                socket=str(path),
                error=str(exc),
            )
            return None
        log.error("no wal-push socket; wal-push pushes directly", socket=str(path), error=str(exc))
        return None
    registry.register(WalCollector(archiver))
    archiver.server.start()
    if config.wal.mode == "stream":
        archiver.stream = WalStreamer(runtime, archiver.keyring)
        archiver.stream.start()
        log.info("WAL streaming enabled", slot=config.wal.slot)
    return archiver
