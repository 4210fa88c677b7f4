"""A physical base backup over the replication protocol, streamed, never spooled.

pg_basebackup cannot write more than one tablespace to stdout, and writing its
tar files to disk would put plaintext there.  ebk therefore speaks the same
protocol pg_basebackup uses (BASE_BACKUP, PostgreSQL 15+ framing) on a libpq
replication connection and hands each archive's bytes straight to the
encryptor.  WAL needed for consistency is included in base.tar (the server's
WAL option), protected from recycling by a temporary replication slot held on
the same connection for the length of the backup.
"""

from __future__ import annotations

import secrets
import select
import zlib
from collections.abc import Generator
from dataclasses import dataclass

import psycopg
import psycopg.pq as pq
import structlog
from psycopg.pq.abc import PGconn, PGresult

from ebk.config import PostgresConfig
from ebk.errors import PostgresError
from ebk.postgres.connection import conninfo, require_supported

log = structlog.get_logger("ebk.postgres")

COALESCE_BYTES = 1024 * 1024
# What ebk asks a server without zstd for: "gzip" (level 1, inflated here and
# compressed again with zstd) or None (uncompressed).  gzip: 4 times less data
# to receive, and receiving is what costs most in this process
# (docs/performance.md, section 6).
NO_ZSTD_TRANSPORT: str | None = "gzip"


@dataclass(frozen=True)
class ArchiveStart:
    """A new tar archive begins: base.tar, or <oid>.tar for a tablespace."""

    name: str
    tablespace_location: str | None


@dataclass(frozen=True)
class ManifestStart:
    """The backup_manifest follows (JSON; pg_verifybackup reads it after restore)."""


@dataclass(frozen=True)
class Tablespace:
    oid: str
    location: str


def _error_text(res: PGresult | None) -> str:
    if res is None or not res.error_message:
        return ""
    return res.error_message.decode(errors="replace").strip()


def _lacks_method(res: PGresult, method: str) -> bool:
    """The server's answer to COMPRESSION '<method>' from a build without that library.

    15-18 say "invalid compression specification: this build does not support
    compression with ZSTD" (SQLSTATE 42601, from the option parser); the sink
    itself would say "zstd compression is not supported by this build" (0A000);
    likewise for gzip on a build without zlib.
    Matched on SQLSTATE plus the method name, not on the wording, which is
    translated.
    """
    sqlstate = res.error_field(pq.DiagnosticField.SQLSTATE)
    return sqlstate in (b"42601", b"0A000") and method in _error_text(res).lower()


class BaseBackup:
    """One BASE_BACKUP run.  Iterate ``events()`` for ArchiveStart/ManifestStart/bytes."""

    def __init__(
        self,
        cfg: PostgresConfig,
        *,
        label: str,
        fast_checkpoint: bool = True,
        compression_level: int = 0,
        compression_workers: int = 0,
    ) -> None:
        self._cfg = cfg
        self._label = label
        self._fast = fast_checkpoint
        self._level = compression_level
        self._workers = compression_workers
        # True when the server compresses the archives (zstd frames arrive).
        self.server_compressed = False
        # True when the server sends gzip (it has no zstd): events() inflates it.
        self._gunzip = False
        self._conn: PGconn | None = None
        self.start_lsn = ""
        self.stop_lsn = ""
        self.timeline = 0
        self.tablespaces: list[Tablespace] = []

    def _fail(self, what: str, detail: str = "") -> PostgresError:
        assert self._conn is not None
        message = detail or self._conn.get_error_message().strip()
        return PostgresError(f"base backup failed while {what}: {message}")

    def start(self) -> None:
        conn = pq.PGconn.connect(conninfo(self._cfg, replication=True).encode())
        self._conn = conn
        if conn.status != pq.ConnStatus.OK:
            message = conn.get_error_message().strip()
            conn.finish()
            self._conn = None
            raise PostgresError(
                f"cannot open a replication connection to {self._cfg.host}:{self._cfg.port}: "
                f"{message}",
                hint="the user needs the REPLICATION attribute and a 'replication' line "
                "in pg_hba.conf",
            )
        require_supported(conn.server_version, f"{self._cfg.host}:{self._cfg.port}")
        slot = f"ebk_{secrets.token_hex(6)}"
        res = conn.exec_(f"CREATE_REPLICATION_SLOT {slot} TEMPORARY PHYSICAL RESERVE_WAL".encode())
        if res.status != pq.ExecStatus.TUPLES_OK:
            raise self._fail("reserving WAL with a temporary replication slot")
        first = self._send_base_backup("zstd" if self._level > 0 else None)
        self.start_lsn = first.get_value(0, 0).decode()  # type: ignore[union-attr]
        self.timeline = int(first.get_value(0, 1))  # type: ignore[arg-type]
        spaces = self._result("listing tablespaces")
        for row in range(spaces.ntuples):
            oid = spaces.get_value(row, 0)
            location = spaces.get_value(row, 1)
            if oid is not None and location is not None:
                self.tablespaces.append(Tablespace(oid.decode(), location.decode()))
        copy = self._result("opening the backup stream", expect=pq.ExecStatus.COPY_OUT)
        del copy

    def _send_base_backup(self, method: str | None) -> PGresult:
        """Start BASE_BACKUP, compressing on the server when it can.

        Server-side zstd means the archives cross the socket compressed and ebk
        only encrypts them: far less data to receive and no compression in this
        process.  A server built without zstd (PostgreSQL 16 and 18 builds exist
        without it) refuses the option at once; ebk then asks for
        NO_ZSTD_TRANSPORT instead and compresses with zstd itself.
        """
        conn = self._conn
        assert conn is not None
        checkpoint = "fast" if self._fast else "spread"
        label = self._label.replace("'", "")
        options = (
            f"LABEL '{label}', PROGRESS false, CHECKPOINT '{checkpoint}', "
            "WAL true, WAIT true, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C'"
        )
        if method == "zstd":
            detail = f"level={self._level}"
            if self._workers > 0:
                detail += f",workers={self._workers}"
            options += f", COMPRESSION 'zstd', COMPRESSION_DETAIL '{detail}'"
        elif method == "gzip":
            options += ", COMPRESSION 'gzip', COMPRESSION_DETAIL 'level=1'"
        try:
            conn.send_query(f"BASE_BACKUP ({options})".encode())
        except psycopg.Error:
            raise self._fail("starting BASE_BACKUP") from None
        self._wait_result()
        first = conn.get_result()
        if first is not None and first.status == pq.ExecStatus.TUPLES_OK:
            self.server_compressed = method == "zstd"
            self._gunzip = method == "gzip"
            return first
        if method is not None and first is not None and _lacks_method(first, method):
            while conn.get_result() is not None:
                pass
            fallback = NO_ZSTD_TRANSPORT if method == "zstd" else None
            log.info(
                f"server cannot compress with {method}; ebk compresses in its own process",
                transport=fallback or "uncompressed",
            )
            return self._send_base_backup(fallback)
        raise self._fail("starting the backup", _error_text(first))

    def _result(self, what: str, expect: pq.ExecStatus = pq.ExecStatus.TUPLES_OK) -> PGresult:
        assert self._conn is not None
        self._wait_result()
        res = self._conn.get_result()
        if res is None or res.status != expect:
            raise self._fail(what, _error_text(res))
        return res

    def _wait_result(self) -> None:
        assert self._conn is not None
        while self._conn.is_busy():
            select.select([self._conn.socket], [], [], 1.0)
            self._conn.consume_input()

    def events(self) -> Generator[ArchiveStart | ManifestStart | bytearray, None, None]:
        """Yield archive boundaries and data; waits on the socket outside the GIL.

        The server sends ~32 KiB messages; data is coalesced into blocks of
        COALESCE_BYTES so the consumer (and a prefetch queue) handles a few
        thousand blocks per GiB rather than tens of thousands of messages.
        """
        conn = self._conn
        assert conn is not None
        block = bytearray()
        inflater: zlib._Decompress | None = None
        while True:
            nbytes, data = conn.get_copy_data(1)
            if nbytes == 0:
                select.select([conn.socket], [], [], 1.0)
                conn.consume_input()
                continue
            if nbytes == -1:
                break
            if nbytes == -2:
                raise self._fail("receiving data")
            kind = data[0]
            if kind == 0x64:  # 'd'
                if inflater is None:
                    block += data[1:]
                else:
                    # Bounded output per call: gzip expands up to ~1000x.
                    pending = bytes(data[1:])
                    while pending:
                        block += inflater.decompress(pending, COALESCE_BYTES)
                        pending = inflater.unconsumed_tail
                        if len(block) >= COALESCE_BYTES:
                            out, block = block, bytearray()
                            yield out
                if len(block) >= COALESCE_BYTES:
                    out, block = block, bytearray()
                    yield out
                continue
            if kind == 0x70:  # 'p' progress, may come in the middle of an archive
                continue
            if inflater is not None:
                self._finish_inflate(inflater)
                inflater = None
            if block:
                out, block = block, bytearray()
                yield out
            if kind == 0x6E:  # 'n'
                name, location, _ = bytes(data[1:]).split(b"\x00", 2)
                archive = name.decode()
                if self._gunzip:
                    inflater = zlib.decompressobj(wbits=31)
                    archive = archive.removesuffix(".gz")
                yield ArchiveStart(archive, location.decode() or None)
            elif kind == 0x6D:  # 'm'
                yield ManifestStart()
            else:
                raise PostgresError(f"unexpected message {chr(kind)!r} in the base backup stream")
        if inflater is not None:
            self._finish_inflate(inflater)
        if block:
            yield block
        end = self._result("finishing the backup")
        self.stop_lsn = end.get_value(0, 0).decode()  # type: ignore[union-attr]
        self._wait_result()
        tail = conn.get_result()
        if tail is not None and tail.status != pq.ExecStatus.COMMAND_OK:
            raise self._fail("finishing the backup")

    def _finish_inflate(self, inflater: zlib._Decompress) -> None:
        if not inflater.eof or inflater.unused_data:
            raise PostgresError(
                "the server's gzip stream of an archive ended early or carried trailing data"
            )

    def close(self) -> None:
        """Close the connection; an unfinished backup is aborted by the server."""
        if self._conn is not None:
            self._conn.finish()
            self._conn = None

    def __enter__(self) -> BaseBackup:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
