"""Retention of the WAL archive: keep exactly what the kept physical backups need.

A physical backup needs the WAL from its start LSN onwards (to be consistent,
and for PITR after it); nothing before the oldest kept physical backup's
start can ever be replayed, on any timeline.  ``retention.pitr_window``
keeps the physical backups that cover the window (every one that started
inside it, and the newest that started before it), so their WAL stays too.

What is deleted depends only on authenticated manifests: the listing of
``wal/`` only enumerates candidates below that cutoff, so an object someone
planted cannot make retention delete WAL a kept backup needs.  Timeline
history files are always kept (tiny, and recovery reads them to choose a
timeline); WAL key objects are kept (one per rotation).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from ebk.app.wal import WalKeyring, fetch_authenticated
from ebk.app.walcheck import parse_lsn
from ebk.errors import IntegrityError, Interrupted, ObjectNotFound
from ebk.format.walobject import HISTORY, SEGMENT
from ebk.manifest import Manifest
from ebk.repository.wal import wal_store
from ebk.runtime import Runtime

if TYPE_CHECKING:
    from ebk.app.retention import Decision

log = structlog.get_logger("ebk.retention")
PITR_REASON = "pitr_window"


def _started(m: Manifest) -> datetime | None:
    try:
        return datetime.fromisoformat(m.start_time)
    except ValueError:
        return None


def keep_pitr_window(
    decisions: Sequence[Decision], backups: Sequence[Manifest], window: timedelta, now: datetime
) -> list[Decision]:
    """The decisions, with the physical backups that cover the PITR window kept."""
    if window <= timedelta(0):
        return list(decisions)
    edge = now - window
    physical = [m for m in backups if m.kind == "physical" and _started(m) is not None]
    inside = {m.backup_id for m in physical if (_started(m) or edge) >= edge}
    before = [m for m in physical if (_started(m) or edge) < edge]
    if before:
        inside.add(before[-1].backup_id)  # replays into the start of the window
    return [
        replace(d, keep=True, reasons=(*d.reasons, PITR_REASON))
        if d.backup_id in inside and not d.keep
        else d
        for d in decisions
    ]


def _segment_start(name: str, segment_size: int) -> int:
    """The LSN where a WAL file's segment starts (segments, .partial and .backup names)."""
    return (int(name[8:16], 16) << 32) + int(name[16:24], 16) * segment_size


def prune_wal(
    runtime: Runtime, *, cancel: threading.Event | None = None, dry_run: bool = False
) -> list[str]:
    """Delete (under the lease) the archived WAL no kept physical backup needs.

    Runs after backup retention, on the backups that are complete now; returns
    the names deleted (or, with ``dry_run``, that would be).
    """
    repo = runtime.repository
    store = wal_store(repo)
    if not any(True for _ in store.files()):
        return []
    if dry_run:
        return _doomed(runtime, repo.list_backups().backups)
    deleted: list[str] = []
    with repo.lease("wal retention") as lease:
        for name in _doomed(runtime, repo.list_backups().backups):
            if cancel is not None and cancel.is_set():
                raise Interrupted(f"WAL retention interrupted after {len(deleted)} deletions")
            try:
                if name.endswith(".stream"):  # a streamed partial (wal.mode = "stream")
                    store.delete_stream_partial(name, lease)
                else:
                    store.delete(name, lease)
            except ObjectNotFound:
                continue
            deleted.append(name)
    if deleted:
        log.info("archived WAL deleted by retention", files=len(deleted), first=deleted[0])
    return deleted


def _doomed(runtime: Runtime, backups: Sequence[Manifest]) -> list[str]:
    starts = [parse_lsn(m.start_lsn) for m in backups if m.kind == "physical" and m.start_lsn]
    if not starts:
        return []  # no base backup: the archive is left alone, never emptied by accident
    keyring = WalKeyring(runtime)
    candidates = [w.name for w in keyring.store.files() if not HISTORY.match(w.name)]
    segment_size = _authenticated_segment_size(keyring, candidates)
    if segment_size is None:
        return []
    cutoff = min(starts) - min(starts) % segment_size
    # Streamed partials of segments below the cutoff too (e.g. an old timeline's last one).
    candidates += keyring.store.all_stream_partials()
    return [n for n in candidates if _segment_start(n, segment_size) < cutoff]


def _authenticated_segment_size(keyring: WalKeyring, names: Sequence[str]) -> int | None:
    """PostgreSQL's wal_segment_size: the size of an archived segment that authenticates."""
    for name in reversed([n for n in names if SEGMENT.match(n)]):
        try:
            return len(fetch_authenticated(keyring, name).data)
        except (IntegrityError, ObjectNotFound):
            continue
    return None
