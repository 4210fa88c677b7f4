"""Archiving and fetching WAL files: `ebk wal-push` and `ebk wal-fetch`.

A push is acknowledged only when its object is durable in the repository
(``put_if_absent`` returned).  Pushing a file whose name is archived already
succeeds only when the archived object authenticates and holds the same bytes
(its keyed digest matches); anything else is refused and nothing is
overwritten.  A fetch writes to ``%p`` only bytes that authenticated in full.

WAL data keys (ebk.repository.wal) are unwrapped once per process and kept in
memory only; a long-lived process (the daemon) pays one key-provider call per
rotation period, not per segment.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from ebk.config import WalConfig, parse_duration
from ebk.errors import (
    ConfigError,
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    RepositoryNotInitialized,
)
from ebk.format.walobject import (
    MAX_WAL_FILE_SIZE,
    SEGMENT,
    STREAM_PARTIAL,
    WalFile,
    is_wal_name,
    object_key_id,
    open_wal,
    seal_wal,
    wal_digest,
)
from ebk.repository.wal import WalStore, new_wal_key, verify_wal_key, wal_store
from ebk.runtime import Runtime

log = structlog.get_logger("ebk.wal")

PREFETCH_DIR = "ebk-prefetch"


def repository_id(runtime: Runtime) -> str:
    marker = runtime.repository.require_initialized()
    if marker.repository_id is None:
        raise RepositoryNotInitialized(
            f"{runtime.repository.url} was created by ebk 0.1 and has no repository id",
            hint="run `ebk repo migrate` once",
        )
    return marker.repository_id


class WalKeyring:
    """The WAL data keys this process uses: verified, unwrapped once, kept in memory.

    Thread-safe: the daemon pushes several segments at once.  ``calls`` counts
    key-provider unwraps and wraps (the benchmark reports them per hour).
    """

    def __init__(
        self, runtime: Runtime, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._runtime = runtime
        self._clock = clock
        self._lock = threading.Lock()
        self._deks: dict[str, tuple[bytes, datetime]] = {}
        self._current: str | None = None
        self._current_created = datetime.min.replace(tzinfo=UTC)
        self._current_bytes = 0
        self._retired: set[str] = set()
        self.store: WalStore = wal_store(runtime.repository)
        self.repository_id = repository_id(runtime)
        cfg = runtime.config.wal
        self._max_age = timedelta(seconds=parse_duration(cfg.key_rotation, "wal.key_rotation"))
        self._max_bytes = cfg.key_rotation_bytes
        self.calls = 0

    def for_read(self, key_id: str) -> bytes:
        """The data key a WAL object's header names, after its key object verified."""
        with self._lock:
            return self._open(key_id)[0]

    def _open(self, key_id: str) -> tuple[bytes, datetime]:
        cached = self._deks.get(key_id)
        if cached is not None:
            return cached
        raw = self.store.read_key(key_id)
        key = verify_wal_key(
            raw,
            self._runtime.trusted_writers(),
            repository_id=self.repository_id,
            key_id=key_id,
        )
        dek = key.unwrap(self._runtime.key_providers)
        self.calls += 1
        self._deks[key_id] = (dek, key.created)
        return dek, key.created

    def for_push(self, size: int) -> tuple[str, bytes]:
        """The current WAL data key (rotated by age and volume) for ``size`` more bytes."""
        with self._lock:
            now = self._clock()
            if (
                self._current is not None
                and now - self._current_created < self._max_age
                and self._current_bytes + size <= self._max_bytes
            ):
                self._current_bytes += size
                return self._current, self._deks[self._current][0]
            if self._current is not None:
                self._retired.add(self._current)
            chosen = self._reuse_recent(now)
            if chosen is None:
                chosen = self._create(now)
            self._current, self._current_created = chosen
            self._current_bytes = size
            return self._current, self._deks[self._current][0]

    def _reuse_recent(self, now: datetime) -> tuple[str, datetime] | None:
        """The newest stored key, when it verifies and is within its rotation age.

        Short-lived processes (a direct wal-push) share it instead of each
        creating a key; volume is counted per process only.
        """
        for stored_id in reversed(self.store.key_ids()):
            key_id: str = stored_id
            if key_id in self._retired:
                return None
            try:
                _, created = self._open(key_id)
            except IntegrityError as exc:
                log.warning("skipping a WAL key object that does not verify", error=exc.message)
                continue
            if timedelta(0) <= now - created < self._max_age:
                return key_id, created
            return None
        return None

    def _create(self, now: datetime) -> tuple[str, datetime]:
        providers = self._runtime.checked_key_providers()
        writer = self._runtime.writer_key()
        dek, key_id, raw = new_wal_key(providers, writer, repository_id=self.repository_id, now=now)
        self.calls += len(providers)
        self.store.put_key(key_id, raw)
        self._deks[key_id] = (dek, now)
        log.info("new WAL data key", key_id=key_id)
        return key_id, now


@dataclass(frozen=True)
class PushResult:
    name: str
    size: int
    stored: int
    already: bool  # the identical file was archived before


def _wal_name(path: Path) -> str:
    name = path.name
    if not is_wal_name(name):
        raise ConfigError(
            f"{name!r} is not a WAL file name (segment, .partial, .history or .backup)",
            hint="use archive_command = 'ebk wal-push %p'",
        )
    return name


def read_wal_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_WAL_FILE_SIZE + 1)
    except FileNotFoundError:
        raise ConfigError(f"WAL file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"WAL file {path} is not readable by this user") from None
    if len(data) > MAX_WAL_FILE_SIZE:
        raise ConfigError(f"{path} is larger than any WAL file; refusing to archive it")
    return data


def push_wal(keyring: WalKeyring, path: Path, config: WalConfig) -> PushResult:
    """Archive one WAL file; returns only once it is durable (or was archived identically)."""
    return push_wal_bytes(keyring, _wal_name(path), read_wal_file(path), config)


def read_wal_fd(fd: int) -> bytes:
    """A WAL file from an open descriptor (the daemon reads what its client opened)."""
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ConfigError("the WAL file handed over is not a regular file")
        data = f.read(MAX_WAL_FILE_SIZE + 1)
    if len(data) > MAX_WAL_FILE_SIZE:
        raise ConfigError("the WAL file handed over is larger than any WAL file")
    return data


def _seal_and_store(
    keyring: WalKeyring,
    name: str,
    data: bytes,
    config: WalConfig,
    *,
    put: Callable[[str, bytes], None],
    read: Callable[[str], bytes],
    hint: str,
) -> int:
    """Seal ``data`` as ``name`` and create it; the stored size, or 0 when an identical copy
    was there already (a different one under the name is refused: never overwritten)."""
    key_id, dek = keyring.for_push(len(data))
    sealed = seal_wal(
        data,
        dek,
        key_id=key_id,
        repository_id=keyring.repository_id,
        name=name,
        level=config.compression_level,
    )
    try:
        put(name, sealed)
    except ObjectExists:
        stored = open_archived(keyring, name, read(name))
        if wal_digest(keyring.for_read(stored.key_id), data) != stored.digest:
            raise IntegrityError(
                f"the archive already holds a different {name}; refusing to overwrite it",
                hint=hint,
            ) from None
        return 0
    return len(sealed)


def push_wal_bytes(keyring: WalKeyring, name: str, data: bytes, config: WalConfig) -> PushResult:
    """Archive WAL file ``name`` holding ``data``; durable (or identical) when it returns."""
    if not is_wal_name(name):
        raise ConfigError(f"{name!r} is not a WAL file name")
    stored = _seal_and_store(
        keyring,
        name,
        data,
        config,
        put=keyring.store.put,
        read=keyring.store.read,
        hint="two clusters may be archiving into one repository, or this cluster was "
        "restored without a new repository: give each cluster its own repository.url",
    )
    if not stored:
        log.info("WAL file was archived before, identical", wal=name)
    return PushResult(name, len(data), stored, already=not stored)


def stream_partial_name(segment: str, size: int) -> str:
    """The archive name of the first ``size`` bytes of ``segment`` (docs/format.md)."""
    return f"{segment}.{size:08X}.stream"


def push_stream_partial(keyring: WalKeyring, segment: str, data: bytes, config: WalConfig) -> str:
    """Store the first ``len(data)`` bytes of a segment being streamed; durable on return."""
    name = stream_partial_name(segment, len(data))
    _seal_and_store(
        keyring,
        name,
        data,
        config,
        put=keyring.store.put_stream_partial,
        read=keyring.store.read_stream_partial,
        hint="two clusters may be streaming into one repository: give each its own repository.url",
    )
    return name


# Page header of a segment's first page (XLogLongPageHeaderData): xlp_seg_size at byte 32.
_SEG_SIZE_AT = 32


def _segment_size_of(data: bytes) -> int:
    if len(data) < _SEG_SIZE_AT + 4:
        return 0
    size = int.from_bytes(data[_SEG_SIZE_AT : _SEG_SIZE_AT + 4], "little")
    if size < 1024**2 or size > MAX_WAL_FILE_SIZE or size & (size - 1):
        return 0
    return size


def fetch_stream_partial(keyring: WalKeyring, segment: str) -> WalFile:
    """The longest authentic streamed partial of ``segment``, zero-padded to a whole segment.

    PostgreSQL reads the zeros as the end of WAL.  ObjectNotFound when there is
    none; IntegrityError when partials exist but none authenticates (fail closed:
    recovery stops rather than ending early on something it could not trust).
    """
    failures: list[str] = []
    for name in keyring.store.stream_partials(segment):
        match = STREAM_PARTIAL.match(name)
        assert match is not None
        try:
            sealed = keyring.store.read_stream_partial(name)
        except ObjectNotFound:
            continue  # superseded and deleted since the listing
        try:
            wal = open_archived(keyring, name, sealed)
        except IntegrityError as exc:
            failures.append(f"{name}: {exc.message}")
            continue
        size = _segment_size_of(wal.data)
        if len(wal.data) != int(match.group(2), 16) or size == 0 or len(wal.data) > size:
            failures.append(f"{name}: its content does not match its name")
            continue
        for failure in failures:
            log.warning("skipping a streamed partial that does not authenticate", error=failure)
        log.info("using a streamed partial segment", wal=segment, partial=name)
        padded = wal.data + bytes(size - len(wal.data))
        return WalFile(padded, wal.digest, wal.key_id)
    if failures:
        raise IntegrityError(
            f"no streamed partial of {segment} authenticates ({'; '.join(failures[:3])})",
            hint="the objects under wal/stream/ were not written by this repository's ebk; "
            "investigate before trusting this archive",
        )
    raise ObjectNotFound(f"{segment} is not archived")


def fetch_segment(keyring: WalKeyring, name: str) -> WalFile:
    """The archived WAL file; for a segment not (yet) archived whole, its streamed partial."""
    try:
        return fetch_authenticated(keyring, name)
    except ObjectNotFound:
        if not SEGMENT.match(name):
            raise
    try:
        return fetch_stream_partial(keyring, name)
    except (ObjectNotFound, IntegrityError) as exc:
        # The daemon stores the whole segment before it deletes its partials: when they
        # vanished (or are not usable), the segment may have been archived meanwhile.
        try:
            return fetch_authenticated(keyring, name)
        except ObjectNotFound:
            raise exc from None


def open_archived(keyring: WalKeyring, name: str, sealed: bytes) -> WalFile:
    key_id = object_key_id(sealed)
    try:
        dek = keyring.for_read(key_id)
    except IntegrityError as exc:
        raise IntegrityError(
            f"archived WAL object {name} names a WAL key that does not verify ({exc.message})",
            hint="the object was not written by this repository's ebk; investigate",
        ) from None
    return open_wal(sealed, dek, repository_id=keyring.repository_id, name=name)


def fetch_authenticated(keyring: WalKeyring, name: str) -> WalFile:
    """The archived WAL file, authenticated; ObjectNotFound when it is not archived."""
    return open_archived(keyring, name, keyring.store.read(name))


def next_segments(name: str, segment_size: int, count: int) -> list[str]:
    """The ``count`` segment names after ``name`` on its timeline."""
    if not SEGMENT.match(name) or segment_size <= 0:
        return []
    per_log = 0x100000000 // segment_size
    tli, log_id, seg = name[:8], int(name[8:16], 16), int(name[16:24], 16)
    out = []
    for _ in range(count):
        seg += 1
        if seg >= per_log:
            log_id, seg = log_id + 1, 0
        out.append(f"{tli}{log_id:08X}{seg:08X}")
    return out


def segment_number(name: str, segment_size: int) -> int:
    per_log = 0x100000000 // segment_size
    return int(name[8:16], 16) * per_log + int(name[16:24], 16)


def _write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.ebk-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Prefetcher:
    """Encrypted copies of the next segments, next to pg_wal, for the next wal-fetch calls.

    Only ciphertext is kept; every use authenticates it like a fresh download,
    and a copy that does not authenticate is dropped and fetched again.
    """

    def __init__(self, keyring: WalKeyring, directory: Path, depth: int) -> None:
        self._keyring = keyring
        self.directory = directory
        self._depth = depth

    def take(self, name: str) -> bytes | None:
        path = self.directory / f"{name}.ebk"
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        path.unlink(missing_ok=True)
        return data

    def prune(self, current: str) -> None:
        """Drop copies PostgreSQL has gone past (or of another timeline)."""
        if not self.directory.is_dir():
            return
        for entry in self.directory.iterdir():
            other = entry.name.removesuffix(".ebk")
            if other <= current or other[:8] != current[:8]:
                entry.unlink(missing_ok=True)

    def fill(self, name: str, segment_size: int) -> None:
        wanted = [
            n
            for n in next_segments(name, segment_size, self._depth)
            if not (self.directory / f"{n}.ebk").exists()
        ]
        if not wanted:
            return
        self.directory.mkdir(mode=0o700, exist_ok=True)

        def one(n: str) -> None:
            try:
                sealed = self._keyring.store.read(n)
            except ObjectNotFound:
                return
            _write_atomically(self.directory / f"{n}.ebk", sealed)

        with ThreadPoolExecutor(max_workers=min(4, len(wanted))) as pool:
            for future in [pool.submit(one, n) for n in wanted]:
                try:
                    future.result()
                except Exception as exc:  # prefetch is best effort
                    log.debug("prefetch failed", error=str(exc))


def fetch_wal(keyring: WalKeyring, name: str, dest: Path, *, prefetch: int) -> WalFile:
    """Write archived WAL file ``name`` to ``dest`` (restore_command); ObjectNotFound if absent."""
    if not is_wal_name(name):
        raise ConfigError(
            f"{name!r} is not a WAL file name",
            hint="use restore_command = 'ebk wal-fetch %f %p'",
        )
    spool = Prefetcher(keyring, dest.parent / PREFETCH_DIR, prefetch)
    wal: WalFile | None = None
    cached = spool.take(name) if prefetch else None
    if cached is not None:
        try:
            wal = open_archived(keyring, name, cached)
        except IntegrityError as exc:
            log.warning("a prefetched copy did not authenticate; fetching again", error=exc.message)
    if wal is None:
        wal = fetch_segment(keyring, name)
    _write_atomically(dest, wal.data)
    if prefetch and SEGMENT.match(name):
        spool.prune(name)
        spool.fill(name, len(wal.data))
    return wal
