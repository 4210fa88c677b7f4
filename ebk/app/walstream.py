"""WAL streaming into the archive (wal.mode = "stream"): segments assembled in memory.

The daemon streams WAL from a physical replication slot (ebk.postgres.walstream)
and keeps the segment it is receiving in one bounded buffer (at most one
segment plus one message; nothing reaches a disk).  A complete segment goes
through the same path as `ebk wal-push` (WAL data key, put_if_absent
idempotence).  Every ``wal.stream_flush_interval`` with new data, the
segment's first N bytes are stored as ``<segment>.<N in hex>.stream`` under
wal/stream/ (docs/format.md), which `ebk wal-fetch` falls back to: an RPO of
seconds.  The slot is told (standby status *flush*) only what is durable, so
the server keeps every byte ebk has not stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
import structlog

from ebk.app.wal import WalKeyring, open_archived, push_stream_partial, push_wal_bytes
from ebk.config import WalConfig, parse_duration
from ebk.errors import EbkError, IntegrityError, LockBusy, ObjectNotFound
from ebk.format.walobject import STREAM_PARTIAL
from ebk.postgres.connection import connect
from ebk.postgres.walstream import (
    EndOfTimeline,
    Keepalive,
    ReplicationStream,
    XLogData,
    format_lsn,
)
from ebk.runtime import Runtime

log = structlog.get_logger("ebk.walstream")
STATUS_INTERVAL = 1.0  # seconds between standby status updates
RETRY_SECONDS = 5.0
# Superseded partials are deleted in batches, under the repository lease: at most this
# often (and at once on a session's first completed segment), so that the streamer rarely
# holds the lease other deleting commands need.
CLEAN_SECONDS = 60.0


def segment_name(timeline: int, lsn: int, segment_size: int) -> str:
    number = lsn // segment_size
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


@dataclass
class StreamStats:
    """What /metrics and /readyz say about the stream."""

    connected: bool = False
    received_bytes: int = 0
    segments: int = 0
    partials: int = 0
    partial_bytes: int = 0  # WAL bytes stored in partials (each re-stores the segment's start)
    received_end: int = 0  # LSN after the last byte received
    flushed: int = 0  # LSN up to which WAL is durable in the repository
    server_end: int = 0  # the server's end of WAL (from its messages)
    flushed_time: float = 0.0
    pending_since: float = 0.0  # monotonic time of the oldest byte not yet durable; 0: none
    last_error: str = ""
    delays: list[float] = field(default_factory=list)  # receipt-to-durable, last 1000
    lock: threading.Lock = field(default_factory=threading.Lock)

    def lag_seconds(self) -> float:
        with self.lock:
            return time.monotonic() - self.pending_since if self.pending_since else 0.0

    def lag_bytes(self) -> int:
        with self.lock:
            return max(0, max(self.server_end, self.received_end) - self.flushed)


class SegmentAssembler:
    """The segment being received: bytes from its start, bounded by the segment size."""

    def __init__(self, timeline: int, start: int, segment_size: int) -> None:
        assert start % segment_size == 0
        self.timeline = timeline
        self.segment_size = segment_size
        self.start = start
        self.buffer = bytearray()
        self.stored_partial = 0  # bytes of this segment stored as a partial

    @property
    def end(self) -> int:
        return self.start + len(self.buffer)

    @property
    def name(self) -> str:
        return segment_name(self.timeline, self.start, self.segment_size)

    def add(self, start: int, data: bytes) -> list[tuple[str, bytes, int, int]]:
        """Append a message; returns the segments it completed.

        Each as (name, bytes, end LSN, bytes of it stored as a partial before).
        """
        if start > self.end:
            raise EbkError(
                f"the WAL stream skipped from {format_lsn(self.end)} to {format_lsn(start)}"
            )
        data = data[self.end - start :]  # a resent overlap is dropped
        done = []
        while data:
            room = self.segment_size - len(self.buffer)
            self.buffer += data[:room]
            data = data[room:]
            if len(self.buffer) == self.segment_size:
                end = self.start + self.segment_size
                done.append((self.name, bytes(self.buffer), end, self.stored_partial))
                self.start += self.segment_size
                self.buffer = bytearray()
                self.stored_partial = 0
        return done


class WalStreamer:
    """The daemon's streaming thread: connect, stream, store, report; reconnect on failure."""

    def __init__(
        self, runtime: Callable[[], Runtime | None], keyring: Callable[[], WalKeyring]
    ) -> None:
        self._runtime = runtime
        self._keyring = keyring
        self.stats = StreamStats()
        self._stop = threading.Event()
        self._superseded: list[str] = []  # authentic partials no longer needed
        self._leftovers: list[str] = []  # partials of an earlier process, for later segments
        self._last_clean = 0.0
        self._thread = threading.Thread(target=self._run, name="wal-stream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except (EbkError, psycopg.Error, OSError) as exc:
                message = getattr(exc, "message", None) or str(exc)
                with self.stats.lock:
                    self.stats.last_error = message
                log.error("WAL streaming failed; retrying", error=message, seconds=RETRY_SECONDS)
            except Exception as exc:  # the thread must survive to retry
                with self.stats.lock:
                    self.stats.last_error = f"unexpected error: {exc}"
                log.exception("WAL streaming failed unexpectedly; retrying")
            finally:
                with self.stats.lock:
                    self.stats.connected = False
            self._stop.wait(RETRY_SECONDS)

    def _refuse_double_archiving(self, runtime: Runtime) -> None:
        """One mode at a time: streamed and archive_command copies of a segment may differ."""
        with connect(runtime.config.postgres) as conn:
            row = conn.execute(
                "SELECT current_setting('archive_mode'), current_setting('archive_command')"
            ).fetchone()
        if row and row[0] != "off" and "wal-push" in str(row[1]):
            raise EbkError(
                "wal.mode = stream, but PostgreSQL also archives with `ebk wal-push` "
                "(archive_command); refusing to stream",
                hint="use one mode: set archive_mode = off (or another archive_command), "
                'or wal.mode = "archive_command"',
            )

    def _session(self) -> None:
        runtime = self._runtime()
        if runtime is None:
            return
        config = runtime.config.wal
        self._refuse_double_archiving(runtime)
        keyring = self._keyring()
        interval = parse_duration(config.stream_flush_interval, "wal.stream_flush_interval")
        with ReplicationStream(runtime.config.postgres) as stream:
            _, timeline, position = stream.identify()
            segment_size = stream.segment_size()
            slot = stream.read_slot(config.slot)
            if slot is None:
                stream.create_slot(config.slot)
                log.info("created the physical replication slot", slot=config.slot)
                slot = stream.read_slot(config.slot)
            restart = slot.restart_lsn if slot is not None and slot.restart_lsn else position
            # The slot may still hold WAL of an earlier timeline (a promotion since): stream
            # that timeline to its end, then the next, as pg_receivewal does.
            tli = timeline
            if slot is not None and slot.timeline and slot.timeline < timeline:
                tli = slot.timeline
            start = restart - restart % segment_size
            with self.stats.lock:
                self.stats.connected = True
                self.stats.last_error = ""
                self.stats.flushed = max(self.stats.flushed, restart)
            while not self._stop.is_set():
                if tli > 1:
                    name, content = stream.timeline_history(tli)
                    push_wal_bytes(keyring, name, content, config)
                segment = SegmentAssembler(tli, start, segment_size)
                self._clean_leftovers(keyring, segment)
                stream.start(config.slot, segment.start, tli)
                log.info(
                    "streaming WAL", slot=config.slot, start=format_lsn(segment.start), timeline=tli
                )
                ended = self._stream_timeline(stream, runtime, keyring, segment, restart, interval)
                if ended is None or ended.next_timeline is None or ended.next_start is None:
                    return
                log.info(
                    "timeline ended; following the next",
                    timeline=tli,
                    next_timeline=ended.next_timeline,
                    at=format_lsn(ended.next_start),
                )
                tli = ended.next_timeline
                start = ended.next_start - ended.next_start % segment_size

    def _stream_timeline(
        self,
        stream: ReplicationStream,
        runtime: Runtime,
        keyring: WalKeyring,
        segment: SegmentAssembler,
        confirmed: int,
        interval: float,
    ) -> EndOfTimeline | None:
        """Receive and store one timeline's WAL; its end (None: stopping).

        ``confirmed``: the slot's position at start; never report less.
        """
        config = runtime.config.wal
        last_status = 0.0
        reported = 0
        last_partial = time.monotonic()
        for message in stream.messages(timeout=min(0.5, interval / 2)):
            if self._stop.is_set():
                return None
            now = time.monotonic()
            reply = False
            if isinstance(message, XLogData):
                self._received(message)
                for name, data, end, stored in segment.add(message.start, message.data):
                    push_wal_bytes(keyring, name, data, config)
                    self._durable(end, segment.timeline, name, full=True)
                    if stored:
                        self._superseded.append(f"{name}.{stored:08X}.stream")
                    self._adopt_leftovers(keyring, name)
                    self._clean(runtime, keyring, name)
                with self.stats.lock:
                    self.stats.server_end = max(self.stats.server_end, message.server_end)
            elif isinstance(message, Keepalive):
                reply = message.reply
                with self.stats.lock:
                    self.stats.server_end = max(self.stats.server_end, message.server_end)
            elif isinstance(message, EndOfTimeline):
                # The rest of this segment lives on the next timeline: keep what came.
                self._store_partial(keyring, segment, config)
                return message
            if len(segment.buffer) > segment.stored_partial and now - last_partial >= interval:
                self._store_partial(keyring, segment, config)
                last_partial = now
            with self.stats.lock:
                flushed = max(self.stats.flushed, confirmed)
            # Tell the server at once when more became durable (the slot frees WAL).
            if reply or flushed > reported or now - last_status >= STATUS_INTERVAL:
                stream.status(segment.end, flushed)
                last_status, reported = now, flushed
        return None

    def _received(self, message: XLogData) -> None:
        with self.stats.lock:
            if not self.stats.pending_since and message.data:
                self.stats.pending_since = time.monotonic()
            self.stats.received_bytes += len(message.data)
            self.stats.received_end = max(
                self.stats.received_end, message.start + len(message.data)
            )

    def _durable(self, end: int, timeline: int, name: str, *, full: bool) -> None:
        with self.stats.lock:
            now = time.monotonic()
            if self.stats.pending_since:
                self.stats.delays = [*self.stats.delays[-999:], now - self.stats.pending_since]
            # Whatever arrived after ``end`` (the rest of the last message) is still pending.
            self.stats.pending_since = now if self.stats.received_end > end else 0.0
            self.stats.flushed = max(self.stats.flushed, end)
            self.stats.flushed_time = time.time()
            if full:
                self.stats.segments += 1
            else:
                self.stats.partials += 1
        log.debug("WAL durable", wal=name, flushed=format_lsn(end), timeline=timeline)

    def _store_partial(
        self, keyring: WalKeyring, segment: SegmentAssembler, config: WalConfig
    ) -> None:
        size = len(segment.buffer)
        if size <= segment.stored_partial or size < 64:
            return
        name = push_stream_partial(keyring, segment.name, bytes(segment.buffer), config)
        previous = segment.stored_partial
        segment.stored_partial = size
        if previous:
            self._superseded.append(f"{segment.name}.{previous:08X}.stream")
        with self.stats.lock:
            self.stats.partial_bytes += size
        self._durable(segment.start + size, segment.timeline, name, full=False)

    def _clean_leftovers(self, keyring: WalKeyring, segment: SegmentAssembler) -> None:
        """Partials an earlier process (killed, say) left behind: those of segments before
        the one streamed now go once they authenticate and their whole segment is archived;
        later ones wait until their segment completes (``_adopt_leftovers``)."""
        self._leftovers = []
        self._last_clean = 0.0
        for name in keyring.store.stream_files(f"{segment.timeline:08X}"):
            match = STREAM_PARTIAL.match(name)
            if match is None:
                continue
            if match.group(1) >= segment.name:
                self._leftovers.append(name)
                continue
            if self._authentic(keyring, name) and self._archived(keyring, match.group(1)):
                self._superseded.append(name)

    def _adopt_leftovers(self, keyring: WalKeyring, completed: str) -> None:
        for name in [n for n in self._leftovers if n.startswith(completed)]:
            self._leftovers.remove(name)
            if self._authentic(keyring, name) and name not in self._superseded:
                self._superseded.append(name)

    @staticmethod
    def _authentic(keyring: WalKeyring, name: str) -> bool:
        try:
            open_archived(keyring, name, keyring.store.read_stream_partial(name))
        except (IntegrityError, ObjectNotFound) as exc:
            log.warning(
                "a streamed partial does not authenticate; left alone",
                wal=name,
                error=getattr(exc, "message", str(exc)),
            )
            return False
        return True

    @staticmethod
    def _archived(keyring: WalKeyring, segment: str) -> bool:
        try:
            open_archived(keyring, segment, keyring.store.read(segment))
        except (IntegrityError, ObjectNotFound):
            return False
        return True

    def _clean(self, runtime: Runtime, keyring: WalKeyring, completed: str) -> None:
        """Delete superseded partials under the repository lease (skipped while it is busy)."""
        recent = self._last_clean and time.monotonic() - self._last_clean < CLEAN_SECONDS
        if not self._superseded or recent:
            return
        self._last_clean = time.monotonic()
        deleted = 0
        try:
            with runtime.repository.lease("wal stream: superseded partials") as lease:
                while self._superseded:
                    keyring.store.delete_stream_partial(self._superseded[0], lease)
                    self._superseded.pop(0)
                    deleted += 1
        except LockBusy:
            log.info("repository lease busy; superseded partials are deleted later")
        except (EbkError, OSError) as exc:  # cleaning never stops the stream
            log.warning(
                "could not delete superseded partials; trying again later",
                error=getattr(exc, "message", None) or str(exc),
            )
        log.debug("deleted superseded partials", count=deleted, segment=completed)

    def not_ready(self, rpo: float) -> str:
        stats = self.stats
        with stats.lock:
            connected, error = stats.connected, stats.last_error
        if not connected:
            return f"WAL streaming is down: {error or 'not connected yet'}"
        lag = stats.lag_seconds()
        if lag > rpo:
            return (
                f"WAL streaming lags: {stats.lag_bytes()} bytes received {lag:.0f}s ago are "
                f"not durable yet (wal.rpo = {rpo:.0f}s)"
            )
        return ""
