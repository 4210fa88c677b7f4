"""Streaming WAL from a physical replication slot (what pg_receivewal does), over libpq.

psycopg's high-level API has no replication support, but libpq's COPY BOTH
does: START_REPLICATION answers PGRES_COPY_BOTH and the WAL arrives as
XLogData ('w') messages, with keepalives ('k'); ebk answers with standby
status updates ('r') whose *flush* position tells the server which WAL the
slot may release.  Nothing here touches a disk: the caller decides what is
durable and reports it.
"""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import psycopg.pq as pq
from psycopg.pq.abc import PGconn, PGresult

from ebk.config import PostgresConfig
from ebk.errors import PostgresError
from ebk.postgres.connection import conninfo, require_supported

# PostgreSQL's epoch (2000-01-01) in Unix seconds; status times count microseconds from it.
PG_EPOCH = 946_684_800
_XLOGDATA = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS = struct.Struct(">cQQQqB")


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_size(text: str) -> int:
    """``SHOW wal_segment_size``'s answer ('16MB', '1GB', '512kB') in bytes."""
    units = {"kB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * factor
    raise PostgresError(f"cannot read wal_segment_size {text!r}")


def pg_now() -> int:
    return int((time.time() - PG_EPOCH) * 1_000_000)


@dataclass(frozen=True)
class XLogData:
    start: int  # LSN of data[0]
    server_end: int  # the server's current end of WAL
    data: bytes


@dataclass(frozen=True)
class Keepalive:
    server_end: int
    reply: bool


@dataclass(frozen=True)
class EndOfTimeline:
    """The server ended the stream (end of the requested timeline, or shutdown)."""

    next_timeline: int | None
    next_start: int | None


@dataclass(frozen=True)
class SlotInfo:
    restart_lsn: int | None
    timeline: int | None


class ReplicationStream:
    """One physical replication connection."""

    def __init__(self, cfg: PostgresConfig) -> None:
        self._where = f"{cfg.host}:{cfg.port}"
        conn = pq.PGconn.connect(conninfo(cfg, replication=True).encode())
        if conn.status != pq.ConnStatus.OK:
            message = conn.get_error_message().strip()
            conn.finish()
            raise PostgresError(
                f"cannot open a replication connection to {self._where}: {message}",
                hint="the user needs the REPLICATION attribute and a 'replication' line "
                "in pg_hba.conf",
            )
        self._conn: PGconn = conn
        self.server_version = conn.server_version
        require_supported(conn.server_version, self._where)

    def _query(self, sql: str, what: str) -> PGresult:
        res = self._conn.exec_(sql.encode())
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise self._fail(what, res)
        return res

    def _fail(self, what: str, res: PGresult | None = None) -> PostgresError:
        text = ""
        if res is not None and res.error_message:
            text = res.error_message.decode(errors="replace").strip()
        text = text or self._conn.get_error_message().strip()
        return PostgresError(f"WAL streaming from {self._where} failed while {what}: {text}")

    @staticmethod
    def _value(res: PGresult, row: int, col: int) -> str | None:
        raw = res.get_value(row, col)
        return None if raw is None else bytes(raw).decode()

    def identify(self) -> tuple[str, int, int]:
        """(system identifier, current timeline, current WAL flush position)."""
        res = self._query("IDENTIFY_SYSTEM", "identifying the system")
        return (
            str(self._value(res, 0, 0)),
            int(str(self._value(res, 0, 1))),
            parse_lsn(str(self._value(res, 0, 2))),
        )

    def segment_size(self) -> int:
        res = self._query("SHOW wal_segment_size", "reading wal_segment_size")
        return parse_size(str(self._value(res, 0, 0)))

    def read_slot(self, name: str) -> SlotInfo | None:
        """The slot's restart position; None when it does not exist (PostgreSQL 15+)."""
        res = self._query(f"READ_REPLICATION_SLOT {name}", f"reading slot {name}")
        kind = self._value(res, 0, 0)
        if kind is None:
            return None
        if kind != "physical":
            raise PostgresError(
                f"replication slot {name} is a {kind} slot; WAL streaming needs a physical one",
                hint="set wal.slot to another name, or drop the slot",
            )
        lsn, tli = self._value(res, 0, 1), self._value(res, 0, 2)
        return SlotInfo(
            parse_lsn(lsn) if lsn else None,
            int(tli) if tli else None,
        )

    def create_slot(self, name: str) -> None:
        self._query(f"CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL", f"creating slot {name}")

    def timeline_history(self, timeline: int) -> tuple[str, bytes]:
        """(file name, content) of the timeline's history file."""
        res = self._query(f"TIMELINE_HISTORY {timeline}", f"reading timeline {timeline}'s history")
        name = str(self._value(res, 0, 0))
        raw = res.get_value(0, 1)
        return name, b"" if raw is None else bytes(raw)

    def start(self, slot: str, lsn: int, timeline: int) -> None:
        sql = f"START_REPLICATION SLOT {slot} PHYSICAL {format_lsn(lsn)} TIMELINE {timeline}"
        res = self._conn.exec_(sql.encode())
        if res.status != pq.ExecStatus.COPY_BOTH:
            raise self._fail(f"starting replication at {format_lsn(lsn)}", res)

    def messages(self, timeout: float) -> Iterator[XLogData | Keepalive | EndOfTimeline | None]:
        """Messages as they arrive; None after ``timeout`` seconds without one."""
        conn = self._conn
        while True:
            nbytes, data = conn.get_copy_data(1)
            if nbytes == 0:
                ready, _, _ = select.select([conn.socket], [], [], timeout)
                if not ready:
                    yield None
                conn.consume_input()
                continue
            if nbytes == -1:
                yield self._end_of_stream()
                return
            if nbytes == -2:
                raise self._fail("receiving WAL")
            raw = bytes(data)
            if raw[:1] == b"w":
                start, end, _ = _XLOGDATA.unpack_from(raw, 1)
                yield XLogData(start, end, raw[1 + _XLOGDATA.size :])
            elif raw[:1] == b"k":
                end, _, reply = _KEEPALIVE.unpack_from(raw, 1)
                yield Keepalive(end, bool(reply))
            else:
                raise PostgresError(f"unexpected message {raw[:1]!r} in the WAL stream")

    def _end_of_stream(self) -> EndOfTimeline:
        conn = self._conn
        try:  # the server's CopyDone: answer with ours (after an error there is no COPY left)
            conn.put_copy_end(None)
            conn.flush()
        except psycopg.Error:
            pass  # the error result below says why
        next_tli: int | None = None
        next_pos: int | None = None
        while (res := conn.get_result()) is not None:
            if res.status == pq.ExecStatus.TUPLES_OK and res.ntuples == 1:
                next_tli = int(str(self._value(res, 0, 0)))
                next_pos = parse_lsn(str(self._value(res, 0, 1)))
            elif res.status == pq.ExecStatus.FATAL_ERROR:
                raise self._fail("ending the stream", res)
        return EndOfTimeline(next_tli, next_pos)

    def status(self, write: int, flush: int, *, reply: bool = False) -> None:
        """Standby status update: ``flush`` is durable; the slot may release WAL before it."""
        msg = _STATUS.pack(b"r", write, flush, flush, pg_now(), 1 if reply else 0)
        if self._conn.put_copy_data(msg) != 1 or self._conn.flush() != 0:
            raise self._fail("sending a status update")

    def close(self) -> None:
        self._conn.finish()

    def __enter__(self) -> ReplicationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
