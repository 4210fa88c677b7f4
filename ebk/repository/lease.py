"""The repository lease: one process at a time mutates what other backups depend on.

Deleting backups (``ebk delete``, retention, ``repo check --clean``) and
rewriting key objects (rewrap) run under the lease: the object
``locks/delete.json`` (owner, host, pid, purpose, expiry).  Taking it is an
atomic create-if-absent on every backend (Storage.put_if_absent), so two
processes never both take a free lease.  An expired lease (its holder died) is
taken over by deleting it and creating a new one; two processes racing for the
same stale lease are told apart by a re-read after a settle delay (the later
writer wins, the other backs off).  The holder re-reads the lease before every
mutation (``check()``) and stops as soon as it is not its own.  Expiry uses
wall-clock time, so hosts' clocks must agree to well within the lease length.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType

import structlog

from ebk.errors import LockBusy, ObjectExists, ObjectNotFound, StorageError
from ebk.identity import process_identity
from ebk.repository.layout import LEASE_OBJECT
from ebk.storage.base import Storage

log = structlog.get_logger("ebk.lease")

DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_SETTLE_SECONDS = 2.0
MAX_LEASE_SIZE = 4096


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
        if len(raw) > MAX_LEASE_SIZE:
            raise ValueError("lease too large")
        doc = json.loads(raw)
        record = cls(**{k: doc[k] for k in cls.__dataclass_fields__})
        if not isinstance(record.expires, int | float) or not isinstance(record.token, str):
            raise ValueError("bad lease")
        return record


class RepositoryLease:
    """The mutation lease of a repository; ``check()`` before each mutation."""

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
        self._storage = storage
        self.purpose = purpose
        self.seconds = seconds
        self.settle = settle
        self._clock = clock
        self._sleep = sleep
        self.token = secrets.token_hex(16)
        self.held = False
        self._expires = 0.0

    def _record(self) -> LeaseRecord:
        user, host, pid = process_identity()
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
            raw = self._storage.get_bytes(LEASE_OBJECT)
        except ObjectNotFound:
            return None
        try:
            return LeaseRecord.from_json(raw)
        except (ValueError, KeyError, TypeError, RecursionError):
            raise LockBusy(
                f"the repository lease {LEASE_OBJECT} in {self._storage.url} is unreadable",
                hint=f"if no ebk deletion or rewrap (retention, delete, repo check --clean, "
                f"keys rotate-rewrap) is running, delete {LEASE_OBJECT} from the repository",
            ) from None

    def _busy(self, holder: LeaseRecord) -> LockBusy:
        return LockBusy(
            f"another ebk process is changing the repository {self._storage.url}: the lease "
            f"is held by {holder.describe()}",
            hint="wait for it to finish, or for the lease to expire if that process died",
        )

    def acquire(self) -> None:
        current = self._read()
        if current is not None and not current.expired(self._clock()):
            raise self._busy(current)
        if current is not None:
            log.warning("taking over an expired repository lease", previous=current.describe())
            self._storage.delete(LEASE_OBJECT)
        try:
            self._storage.put_if_absent(LEASE_OBJECT, self._record().to_json())
        except ObjectExists:
            holder = self._read()
            raise (
                self._busy(holder)
                if holder
                else LockBusy(
                    f"the repository lease in {self._storage.url} changed hands while taking it",
                    hint="try again",
                )
            ) from None
        if current is not None:
            # Two processes may have deleted the same stale lease: the later writer wins.
            self._sleep(self.settle)
            after = self._read()
            if after is None or after.token != self.token:
                raise (
                    self._busy(after)
                    if after
                    else LockBusy(
                        f"the repository lease in {self._storage.url} vanished while taking it",
                        hint="another process may be taking it; try again",
                    )
                )
        self.held = True
        log.info("repository lease taken", purpose=self.purpose, seconds=self.seconds)

    def check(self) -> None:
        """Before each mutation: the lease must still be ours; renewed past its half-life."""
        if not self.held:
            raise LockBusy("the repository lease is not held")
        current = self._read()
        if current is None or current.token != self.token:
            self.held = False
            raise LockBusy(
                "the repository lease was lost"
                + (f" to {current.describe()}" if current else " (the lease object vanished)")
                + "; stopping",
                hint="this process was stalled longer than the lease; run it again",
            )
        if self._expires - self._clock() < self.seconds / 2:
            self._storage.put_bytes(LEASE_OBJECT, self._record().to_json())

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            current = self._read()
        except LockBusy:
            return
        if current is not None and current.token == self.token:
            self._storage.delete(LEASE_OBJECT)
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
