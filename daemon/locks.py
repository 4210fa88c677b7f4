"""Locks: one backup of a cluster at a time; one deleter per repository.

Cluster lock: a PostgreSQL session advisory lock on the source cluster, held on
a connection of its own for the length of the backup.  It works across
processes and hosts (a Kubernetes CronJob and a sidecar cannot collide) and
vanishes with the session if ebk dies.  Advisory locks are per database: every
ebk that backs up a cluster must use the same ``postgres.dbname`` (default
"postgres").

Repository lease: the object ``locks/delete.json`` (owner, host, pid, expiry)
taken before deleting backups.  Where the backend can create an object only if
it is absent (local directories: link(2), which fails on an existing name; or a
backend offering ``put_bytes_if_absent``) taking it is atomic.  Elsewhere the
Storage seam has only unconditional writes, so the lease is written, then read
back after a settle delay: with read-after-write consistency (S3, GCS, Azure)
the later of two racing writers wins and the other backs off.  Limit: a writer
that stalls for longer than the settle delay between its read and its write can
still overlap another for one deletion; the holder re-reads the lease before
every deletion and stops as soon as it is not its own.  Expiry uses wall-clock
time, so hosts' clocks must agree to well within the lease length.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType

import psycopg
import structlog

from ebk.config import PostgresConfig
from ebk.errors import LockBusy, ObjectNotFound, PostgresError, StorageError
from ebk.postgres.connection import conninfo
from ebk.storage.base import Storage, check_name

log = structlog.get_logger("ebk.locks")

BACKUP_LOCK_NAME = "ebk-backup"
LEASE_OBJECT = "locks/delete.json"
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_SETTLE_SECONDS = 2.0


def advisory_key(name: str = BACKUP_LOCK_NAME) -> int:
    """A fixed signed 64-bit key: the same in every ebk version and on every host."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _identity() -> tuple[str, str, int]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return user, socket.gethostname(), os.getpid()


_HOLDER_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr), a.client_hostname, a.usename,
       a.backend_start
  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _holder(conn: psycopg.Connection, key: int) -> str:
    """Who holds the advisory lock, from pg_locks + pg_stat_activity (best effort)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    try:
        row = conn.execute(_HOLDER_SQL, (unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchone()
    except psycopg.Error:
        return "another session (its details are not visible to this user)"
    if row is None:
        return "another session (it may just have finished)"
    pid, app, addr, hostname, user, since = row
    parts = [f"PostgreSQL backend pid {pid}"]
    if app:
        parts.append(f"application_name {app!r}")
    if user:
        parts.append(f"user {user}")
    if addr or hostname:
        parts.append(f"from {hostname or addr}")
    elif pid is not None and user:
        parts.append("over a local socket")
    if since is not None:
        parts.append(f"connected since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip())
    return ", ".join(parts)


@contextlib.contextmanager
def cluster_backup_lock(cfg: PostgresConfig) -> Iterator[None]:
    """Held for the length of one backup; LockBusy (exit 8) names the holder."""
    user, host, pid = _identity()
    key = advisory_key()
    app = f"ebk-lock {host} pid {pid}"[:63]
    try:
        conn = psycopg.connect(
            conninfo(cfg),
            autocommit=True,
            application_name=app,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=6,
        )
    except psycopg.OperationalError as exc:
        raise PostgresError(
            f"cannot connect to PostgreSQL at {cfg.host}:{cfg.port} as {cfg.user} to take the "
            f"backup lock: {str(exc).strip()}",
            hint="check [postgres] host/port/user in the config and that the server is running",
        ) from None
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not row or not row[0]:
            holder = _holder(conn, key)
            raise LockBusy(
                f"another backup of the cluster at {cfg.host}:{cfg.port} is running; the "
                f"backup lock is held by {holder}",
                hint="wait for it to finish: only one ebk backup of a cluster runs at a time, "
                "across hosts (schedule the jobs apart)",
            )
        log.debug("cluster backup lock taken", key=key, owner=f"{user}@{host}")
        yield
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        conn.close()


@dataclass(frozen=True)
class LeaseRecord:
    """The content of locks/delete.json."""

    token: str
    owner: str
    host: str
    pid: int
    purpose: str
    acquired: str
    expires: float  # seconds since the epoch

    def expired(self, now: float) -> bool:
        return now >= self.expires

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.expires, UTC).isoformat(timespec="seconds")
        return (
            f"{self.owner} on {self.host} (pid {self.pid}, {self.purpose}), "
            f"taken {self.acquired}, expires {until}"
        )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> LeaseRecord:
        doc = json.loads(raw)
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__})


def _local_root(storage: Storage) -> str | None:
    from ebk.storage.local import LocalStorage

    return str(storage.root) if isinstance(storage, LocalStorage) else None


def _link_exclusive(root: str, name: str, data: bytes) -> bool:
    """Create root/name with complete content only if absent (link(2) fails on EEXIST)."""
    from ebk.storage.local import PARTIAL_MARK

    final = os.path.join(root, check_name(name))
    directory = os.path.dirname(final)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = os.path.join(directory, f"{PARTIAL_MARK}{uuid.uuid4().hex}-{os.path.basename(final)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


class RepositoryLease:
    """The deletion lease of a repository; ``check()`` before each deletion."""

    def __init__(
        self,
        storage: Storage,
        *,
        purpose: str,
        seconds: float = DEFAULT_LEASE_SECONDS,
        settle: float = DEFAULT_SETTLE_SECONDS,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.storage = storage
        self.purpose = purpose
        self.seconds = seconds
        self.settle = settle
        self._clock = clock
        self._sleep = sleep
        self.token = secrets.token_hex(16)
        self.held = False
        self._expires = 0.0

    def _record(self) -> LeaseRecord:
        user, host, pid = _identity()
        now = self._clock()
        self._expires = now + self.seconds
        return LeaseRecord(
            self.token,
            user,
            host,
            pid,
            self.purpose,
            datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            self._expires,
        )

    def _read(self) -> LeaseRecord | None:
        try:
            raw = self.storage.get_bytes(LEASE_OBJECT)
        except ObjectNotFound:
            return None
        try:
            return LeaseRecord.from_json(raw)
        except (ValueError, KeyError, TypeError):
            raise LockBusy(
                f"the repository deletion lease {LEASE_OBJECT} in {self.storage.url} is unreadable",
                hint=f"if no ebk deletion (retention, repo check --clean) is running, delete "
                f"{LEASE_OBJECT} from the repository",
            ) from None

    def _busy(self, holder: LeaseRecord) -> LockBusy:
        return LockBusy(
            f"another ebk process is deleting in the repository {self.storage.url}: the lease "
            f"is held by {holder.describe()}",
            hint="wait for it to finish, or for the lease to expire if that process died",
        )

    def _create(self, data: bytes) -> bool | None:
        """True/False for an atomic create-if-absent; None when the backend has none."""
        conditional = getattr(self.storage, "put_bytes_if_absent", None)
        if callable(conditional):
            return bool(conditional(LEASE_OBJECT, data))
        root = _local_root(self.storage)
        if root is not None:
            try:
                return _link_exclusive(root, LEASE_OBJECT, data)
            except OSError as exc:
                raise StorageError(
                    f"cannot create the lease {LEASE_OBJECT}: {exc.strerror}"
                ) from exc
        return None

    def _remove_stale(self, stale: LeaseRecord) -> None:
        """Remove an expired lease; on a local directory only if it is still that one."""
        root = _local_root(self.storage)
        if root is None:
            self.storage.delete(LEASE_OBJECT)
            return
        final = os.path.join(root, LEASE_OBJECT)
        tomb = f"{final}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(final, tomb)
        except FileNotFoundError:
            return
        try:
            with open(tomb, "rb") as f:
                moved = LeaseRecord.from_json(f.read())
            if moved.token != stale.token:  # a fresh lease slipped in: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(tomb, final)
                raise self._busy(moved)
        except (ValueError, KeyError, TypeError):
            pass
        finally:
            os.unlink(tomb)

    def acquire(self) -> None:
        current = self._read()
        now = self._clock()
        if current is not None and not current.expired(now):
            raise self._busy(current)
        if current is not None:
            log.warning("taking over an expired repository lease", previous=current.describe())
            self._remove_stale(current)
        record = self._record().to_json()
        created = self._create(record)
        if created is False:
            holder = self._read()
            raise (
                self._busy(holder)
                if holder
                else LockBusy(
                    f"the repository deletion lease in {self.storage.url} changed hands while "
                    "taking it",
                    hint="try again",
                )
            )
        takeover_race = current is not None and _local_root(self.storage) is None
        if created is None or takeover_race:
            if created is None:
                self.storage.put_bytes(LEASE_OBJECT, record)
            # Without an atomic create (or after a remote takeover), the later writer wins.
            self._sleep(self.settle)
            after = self._read()
            if after is None or after.token != self.token:
                raise (
                    self._busy(after)
                    if after
                    else LockBusy(
                        f"the repository deletion lease in {self.storage.url} vanished while "
                        "taking it",
                        hint="another process may be taking it; try again",
                    )
                )
        self.held = True
        log.info("repository lease taken", purpose=self.purpose, seconds=self.seconds)

    def check(self) -> None:
        """Before each deletion: the lease must still be ours; renewed past its half-life."""
        if not self.held:
            raise LockBusy("the repository deletion lease is not held")
        current = self._read()
        if current is None or current.token != self.token:
            self.held = False
            raise LockBusy(
                "the repository deletion lease was lost"
                + (f" to {current.describe()}" if current else " (the lease object vanished)")
                + "; stopping deletions",
                hint="this process was stalled longer than the lease; run it again",
            )
        if self._expires - self._clock() < self.seconds / 2:
            self.storage.put_bytes(LEASE_OBJECT, self._record().to_json())

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            current = self._read()
        except LockBusy:
            return
        if current is not None and current.token == self.token:
            self.storage.delete(LEASE_OBJECT)
        else:
            log.warning("the repository lease was no longer ours at release")

    def __enter__(self) -> RepositoryLease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.release()
        except StorageError as err:
            if exc is None:
                raise
            log.warning("could not release the repository lease", error=str(err))
