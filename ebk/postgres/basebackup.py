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
from collections.abc import Callable, Generator, Iterable
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


def _lacks_zstd(res: PGresult) -> bool:
    """The server's answer to COMPRESSION 'zstd' from a build without libzstd.

    15-18 say "invalid compression specification: this build does not support
    compression with ZSTD" (SQLSTATE 42601, from the option parser); the sink
    itself would say "zstd compression is not supported by this build" (0A000).
    Matched on SQLSTATE plus the method name, not on the wording, which is
    translated.
    """
    sqlstate = res.error_field(pq.DiagnosticField.SQLSTATE)
    return sqlstate in (b"42601", b"0A000") and "zstd" in _error_text(res).lower()


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
        max_rate_kb: int = 0,
        parent_manifest: Callable[[], Iterable[bytes]] | None = None,
    ) -> None:
        self._cfg = cfg
        # Incremental (PostgreSQL 17+): the parent's backup_manifest, streamed by
        # UPLOAD_MANIFEST before BASE_BACKUP ... INCREMENTAL (a callable: the zstd
        # fallback re-sends BASE_BACKUP and uploads it again).
        self._parent_manifest = parent_manifest
        self._label = label
        self._fast = fast_checkpoint
        self._level = compression_level
        self._workers = compression_workers
        self._max_rate_kb = max_rate_kb  # BASE_BACKUP MAX_RATE: the server throttles what it sends
        # True when the server compresses the archives (zstd frames arrive).
        self.server_compressed = False
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
        first = self._send_base_backup(server_compression=self._level > 0)
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

    def _send_base_backup(self, *, server_compression: bool) -> PGresult:
        """Start BASE_BACKUP, compressing on the server when it can.

        Server-side zstd means the archives cross the socket compressed and ebk
        only encrypts them: far less data to receive and no compression in this
        process.  A server built without zstd (PostgreSQL 16 and 18 builds exist
        without it) refuses the option at once; ebk then asks for the archives
        uncompressed and compresses them with zstd itself.  Not the server's gzip,
        the one method such builds still have: it cost the server over 4 times the
        CPU of sending plain tar, saved ebk almost nothing (inflating costs what
        receiving the bigger stream did) and stores the same bytes
        (docs/performance.md, section 6).
        """
        conn = self._conn
        assert conn is not None
        checkpoint = "fast" if self._fast else "spread"
        label = self._label.replace("'", "")
        options = (
            f"LABEL '{label}', PROGRESS false, CHECKPOINT '{checkpoint}', "
            "WAL true, WAIT true, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C'"
        )
        if self._parent_manifest is not None:
            self._upload_manifest(self._parent_manifest())
            options += ", INCREMENTAL"
        if self._max_rate_kb > 0:
            options += f", MAX_RATE {self._max_rate_kb}"
        if server_compression:
            detail = f"level={self._level}"
            if self._workers > 0:
                detail += f",workers={self._workers}"
            options += f", COMPRESSION 'zstd', COMPRESSION_DETAIL '{detail}'"
        try:
            conn.send_query(f"BASE_BACKUP ({options})".encode())
        except psycopg.Error:
            raise self._fail("starting BASE_BACKUP") from None
        self._wait_result()
        first = conn.get_result()
        if first is not None and first.status == pq.ExecStatus.TUPLES_OK:
            self.server_compressed = server_compression
            return first
        if server_compression and first is not None and _lacks_zstd(first):
            while conn.get_result() is not None:
                pass
            log.info("server cannot compress with zstd; ebk compresses in its own process")
            return self._send_base_backup(server_compression=False)
        if self._parent_manifest is not None:
            raise PostgresError(
                f"PostgreSQL refused the incremental backup: {_error_text(first)}",
                hint="incremental backups need WAL summaries covering everything since the "
                "parent began (summarize_wal = on before the parent, and summaries younger "
                "than wal_summary_keep_time); take a full backup (`ebk backup --type "
                "physical`) and build on it",
            )
        raise self._fail("starting the backup", _error_text(first))

    def _upload_manifest(self, chunks: Iterable[bytes]) -> None:
        """UPLOAD_MANIFEST: the parent's backup_manifest, streamed as COPY data."""
        conn = self._conn
        assert conn is not None
        res = conn.exec_(b"UPLOAD_MANIFEST")
        if res.status != pq.ExecStatus.COPY_IN:
            raise self._fail("uploading the parent's backup_manifest", _error_text(res))
        try:
            for chunk in chunks:
                if chunk and conn.put_copy_data(chunk) != 1:
                    raise self._fail("uploading the parent's backup_manifest")
        except BaseException:
            conn.put_copy_end(b"ebk: upload aborted")
            while conn.get_result() is not None:
                pass
            raise
        if conn.put_copy_end(None) != 1:
            raise self._fail("uploading the parent's backup_manifest")
        failed = ""
        while (done := conn.get_result()) is not None:
            if done.status != pq.ExecStatus.COMMAND_OK:
                failed = failed or _error_text(done)
        if failed:
            raise PostgresError(
                f"PostgreSQL refused the parent backup's backup_manifest: {failed}",
                hint="the parent backup is not usable for an incremental backup of this "
                "server; take a full backup (`ebk backup --type physical`)",
            )

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
                block += data[1:]
                if len(block) >= COALESCE_BYTES:
                    out, block = block, bytearray()
                    yield out
                continue
            if block:
                out, block = block, bytearray()
                yield out
            if kind == 0x6E:  # 'n'
                name, location, _ = bytes(data[1:]).split(b"\x00", 2)
                yield ArchiveStart(name.decode(), location.decode() or None)
            elif kind == 0x6D:  # 'm'
                yield ManifestStart()
            elif kind == 0x70:  # 'p' progress
                continue
            else:
                raise PostgresError(f"unexpected message {chr(kind)!r} in the base backup stream")
        if block:
            yield block
        end = self._result("finishing the backup")
        self.stop_lsn = end.get_value(0, 0).decode()  # type: ignore[union-attr]
        self._wait_result()
        tail = conn.get_result()
        if tail is not None and tail.status != pq.ExecStatus.COMMAND_OK:
            raise self._fail("finishing the backup")

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
