"""Taking a backup: source -> compress -> encrypt -> hash -> storage, then the manifest.

Fail closed: every byte of database content passes through PayloadWriter; the
only other objects are the wrapped key and the manifest.  On any failure the
open upload is aborted and the objects written so far are removed, so nothing
is listed and nothing is left for the next backup to trip on.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import structlog

import ebk
from ebk.config import Config
from ebk.errors import Interrupted
from ebk.format.payload import HashingWriter, PayloadWriter
from ebk.format.stream import VERSION as STREAM_VERSION
from ebk.incremental import IncrementalPlan, plan_incremental
from ebk.keys.base import KeyProvider
from ebk.keys.envelope import new_data_key
from ebk.manifest import Manifest, StoredObject
from ebk.pipeline import prefetch
from ebk.placement import choose as choose_placement
from ebk.postgres import fingerprint
from ebk.postgres.basebackup import ArchiveStart, BaseBackup, ManifestStart
from ebk.postgres.connection import ClusterInfo, cluster_info, list_databases
from ebk.postgres.dump import READ_SIZE, dump_process
from ebk.postgres.fingerprint import EXTENSION as FINGERPRINTS
from ebk.postgres.fingerprint import DatabasePrint, Fingerprints
from ebk.progress import Progress
from ebk.repository import Repository
from ebk.repository.layout import new_backup_id, stream_context
from ebk.repository.writer import WriterKey
from ebk.storage.base import ObjectWriter

log = structlog.get_logger("ebk.backup")


@dataclass
class ObjectSink:
    """One encrypted object being uploaded."""

    name: str
    role: str
    upload: ObjectWriter
    hasher: HashingWriter
    payload: PayloadWriter
    extra: dict[str, str | None]
    cancel: threading.Event | None = None

    def write(self, data: bytes | bytearray) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Interrupted("the backup was cancelled (shutdown); its upload was aborted")
        self.payload.write(data)

    def finish(self) -> StoredObject:
        self.payload.close()
        self.upload.commit()
        return StoredObject(
            name=self.name,
            role=self.role,
            plain_size=self.payload.bytes_in,
            stored_size=self.hasher.size,
            sha256=self.hasher.hexdigest(),
            **self.extra,
        )


class BackupRun:
    """State of one backup while it is written; cleans up after itself on failure."""

    def __init__(
        self,
        config: Config,
        repo: Repository,
        providers: Sequence[KeyProvider],
        writer: WriterKey,
        *,
        kind: str,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        conn: psycopg.Connection | None = None,
    ) -> None:
        self.config = config
        self.conn = conn  # the cluster lock's connection: metadata queries share it
        self.cancel = cancel  # set by the daemon on SIGTERM; checked per chunk
        self.repo = repo
        self.providers = providers
        self.writer = writer
        self.kind = kind
        self.backup_id = new_backup_id()
        self.progress = progress or Progress(f"backup {self.backup_id}", enabled=False)
        self.objects: list[StoredObject] = []
        self._open: ObjectSink | None = None
        self._dek = b""
        self._dek_id = ""
        self.log = log.bind(backup_id=self.backup_id, kind=kind)

    def open_object(
        self, name: str, role: str, *, precompressed: bool = False, **extra: str | None
    ) -> ObjectSink:
        upload = self.repo.open_object_writer(self.backup_id, name)
        hasher = HashingWriter(upload)
        payload = PayloadWriter(
            hasher,
            self._dek,
            key_id=self._dek_id,
            associated_data=stream_context(self.backup_id, name),
            level=self.config.backup.compression_level,
            threads=self.config.backup.compression_threads,
            precompressed=precompressed,
        )
        self._open = ObjectSink(name, role, upload, hasher, payload, dict(extra), self.cancel)
        return self._open

    def close_object(self) -> None:
        if self._open is not None:
            sink, self._open = self._open, None
            stored = sink.finish()
            self.objects.append(stored)
            self.log.info(
                "object stored",
                object=stored.name,
                plain_bytes=stored.plain_size,
                stored_bytes=stored.stored_size,
            )

    def run(self, produce: Callable[[BackupRun], dict[str, object]]) -> Manifest:
        started = datetime.now(UTC)
        info = cluster_info(self.config.postgres, self.conn)
        self.info = info
        dek, key_object = new_data_key(
            self.providers, backup_id=self.backup_id, cluster=info.system_identifier
        )
        self._dek, self._dek_id = dek, key_object.dek_id
        self.log.info("backup started", repository=self.repo.url, cluster=info.system_identifier)
        try:
            self.repo.create_key_object(key_object)
            facts = produce(self)
            self.close_object()
            manifest = Manifest(
                backup_id=self.backup_id,
                kind=self.kind,
                ebk_version=ebk.__version__,
                stream_version=STREAM_VERSION,
                system_identifier=info.system_identifier,
                server_version=info.server_version,
                server_version_num=info.server_version_num,
                start_time=started.isoformat(timespec="microseconds"),
                stop_time=datetime.now(UTC).isoformat(timespec="microseconds"),
                dek_id=key_object.dek_id,
                key_slots=[f"{s.provider}/{s.kek_id}" for s in key_object.slots],
                objects=self.objects,
                **facts,  # type: ignore[arg-type]
            )
            manifest.seal(dek)
            manifest.sign(self.writer)
            self.repo.commit_manifest(manifest)
        except BaseException:
            self._cleanup()
            raise
        finally:
            self.progress.finish()
        self.log.info(
            "backup complete", stored_bytes=manifest.stored_size, plain_bytes=manifest.plain_size
        )
        return manifest

    def _cleanup(self) -> None:
        if self._open is not None:
            self._open.upload.abort()
            self._open = None
        try:
            self.repo.discard_unfinished(self.backup_id)
        except Exception as exc:  # cleanup must not hide the original error
            self.log.warning(
                "cleanup of the failed backup was incomplete; `ebk repo check "
                "--clean` removes the rest",
                error=str(exc),
            )
        self.log.error("backup failed; nothing was listed")


MAX_MANIFEST_KEPT = 64 * 1024 * 1024


def _source_size(pg_manifest: bytes) -> int | None:
    """Bytes of database files, summed from PostgreSQL's own backup_manifest."""
    try:
        files = json.loads(pg_manifest)["Files"]
        return sum(int(f["Size"]) for f in files)
    except (ValueError, KeyError, TypeError):
        return None


def produce_physical(
    run: BackupRun, incremental: IncrementalPlan | None = None
) -> dict[str, object]:
    cfg = run.config.postgres
    building_on = incremental is not None and incremental.parent is not None
    placement = choose_placement(run.config.backup, cfg)
    run.log.info("compression placement", location=placement.location, reason=placement.reason)
    with BaseBackup(
        cfg,
        label=f"ebk {run.backup_id}",
        compression_level=run.config.backup.compression_level
        if placement.location == "server"
        else 0,
        compression_workers=run.config.backup.compression_threads,
        max_rate_kb=run.config.backup.max_rate_kb,
        parent_manifest=incremental.manifest_chunks if building_on and incremental else None,
    ) as base:
        locations = {t.oid: t.location for t in base.tablespaces}
        sink: ObjectSink | None = None
        pg_manifest: bytearray | None = None
        with closing(prefetch(base.events())) as events:
            for event in events:
                if isinstance(event, bytearray):
                    assert sink is not None
                    sink.write(event)
                    run.progress.advance(len(event))
                    if pg_manifest is not None and len(pg_manifest) < MAX_MANIFEST_KEPT:
                        pg_manifest += event
                elif isinstance(event, ArchiveStart):
                    run.close_object()
                    # Server-compressed archives arrive as base.tar.zst; the stream
                    # header records the compression, so the stored name stays base.tar.
                    archive = event.name.removesuffix(".zst")
                    oid = archive.removesuffix(".tar")
                    is_base = archive == "base.tar"
                    sink = run.open_object(
                        f"{archive}.ebk",
                        "base" if is_base else "tablespace",
                        precompressed=base.server_compressed,
                        tablespace_oid=None if is_base else oid,
                        tablespace_location=None
                        if is_base
                        else locations.get(oid, event.tablespace_location),
                    )
                elif isinstance(event, ManifestStart):
                    run.close_object()
                    sink = run.open_object("backup_manifest.ebk", "backup_manifest")
                    pg_manifest = bytearray()
        run.close_object()
        facts: dict[str, object] = {
            "start_lsn": base.start_lsn,
            "stop_lsn": base.stop_lsn,
            "timeline": base.timeline,
            "source_size": _source_size(bytes(pg_manifest)) if pg_manifest else None,
        }
    if incremental is not None:
        incremental.require_parent_still_listed(run.repo)
        facts.update(incremental.facts())
    return facts


def _physical_with_fingerprints(run: BackupRun, plan: IncrementalPlan | None) -> dict[str, object]:
    """The base backup between two fingerprints (ebk.postgres.fingerprint: consistency)."""
    facts, prints = fingerprint.physical_fingerprints(
        run.config.postgres, run.conn, lambda: produce_physical(run, plan)
    )
    return {**facts, "extensions": {FINGERPRINTS: prints}}


def _dump_into(
    run: BackupRun,
    info: ClusterInfo,
    name: str,
    role: str,
    database: str | None,
    globals_only: bool,
) -> DatabasePrint | None:
    """Dump one object; a database is dumped from an exported snapshot and fingerprinted in it."""
    sink = run.open_object(name, role, database=database)
    printed: DatabasePrint | None = None
    with contextlib.ExitStack() as stack:
        snapshot, conn = (
            stack.enter_context(fingerprint.exported_snapshot(run.config.postgres, database))
            if database is not None
            else (None, None)
        )
        with dump_process(
            run.config.postgres,
            info.major,
            database=database,
            globals_only=globals_only,
            snapshot=snapshot,
        ) as out:
            while chunk := out.read(READ_SIZE):
                sink.write(chunk)
                run.progress.advance(len(chunk))
        if conn is not None:
            printed = fingerprint.capture_database(conn)
    run.close_object()
    return printed


def produce_logical(run: BackupRun, databases: Sequence[str] = ()) -> dict[str, object]:
    info = run.info
    selected = list(databases) or list(run.config.backup.databases)
    everything = not selected
    if everything:
        selected = list_databases(run.config.postgres, run.conn)
        _dump_into(run, info, "globals.sql.ebk", "globals", None, globals_only=True)
    prints = Fingerprints("snapshot")
    for index, database in enumerate(selected, start=1):
        printed = _dump_into(
            run, info, f"dump-{index:04d}.ebk", "dump", database, globals_only=False
        )
        if printed is not None:
            prints.databases[database] = printed
    return {"databases": selected, "extensions": {FINGERPRINTS: fingerprint.recorded(prints)}}


def take_backup(
    config: Config,
    repo: Repository,
    providers: Sequence[KeyProvider],
    writer: WriterKey,
    *,
    kind: str,
    databases: Sequence[str] = (),
    progress: bool | None = None,
    cancel: threading.Event | None = None,
    conn: psycopg.Connection | None = None,
) -> Manifest:
    """``kind``: physical, logical, or incremental (a physical backup built on a parent)."""
    plan: IncrementalPlan | None = None
    if kind == "incremental":
        plan = plan_incremental(config, repo, providers, conn)
        if plan.parent is None:
            log.warning("no parent to build on; taking a full backup", reason=plan.reason)
        kind = "physical"
    run = BackupRun(config, repo, providers, writer, kind=kind, cancel=cancel, conn=conn)
    run.progress = Progress(f"backup {run.backup_id}", enabled=progress)
    if kind == "physical":
        return run.run(lambda r: _physical_with_fingerprints(r, plan))
    return run.run(lambda r: produce_logical(r, databases))
