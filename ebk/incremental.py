"""Planning an incremental physical backup (PostgreSQL 17+): which parent, and its manifest.

`ebk backup --type incremental` (and the daemon's ``incremental`` job) builds on
the newest authenticated physical backup of the same cluster, major and
timeline whose start the server's WAL summaries still cover.  The parent's
``backup_manifest`` object is decrypted (authenticated chunk by chunk, then
checked against the signed manifest's SHA-256) and streamed to the server by
UPLOAD_MANIFEST; nothing of it touches a disk.  With no usable parent ebk
takes a full backup and says why: a schedule of incrementals never stops
producing backups, and the result line names what was taken.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg
import structlog

from ebk.chain import authenticated_chain, choose_parent
from ebk.config import Config
from ebk.errors import BackupNotFound, IntegrityError
from ebk.keys.base import KeyProvider
from ebk.postgres.connection import cluster_info, connect
from ebk.postgres.walsummary import (
    current_timeline,
    require_incremental_support,
    require_summarize_wal,
    summaries_cover,
    where,
)
from ebk.repository import Repository
from ebk.restore.reader import open_object
from ebk.restore.session import OpenedBackup, open_backup

log = structlog.get_logger("ebk.incremental")
READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class IncrementalPlan:
    """The parent to build on (authenticated), or None and why a full backup is taken."""

    parent: OpenedBackup | None
    reason: str = ""

    def facts(self) -> dict[str, object]:
        """The chain members of the new backup's manifest."""
        if self.parent is None:
            return {}
        p = self.parent.manifest
        return {
            "parent": p.backup_id,
            "chain_root": p.chain_root or p.backup_id,
            "chain_depth": (p.chain_depth or 0) + 1,
        }

    def manifest_chunks(self) -> Iterator[bytes]:
        """The parent's backup_manifest, decrypted; its SHA-256 is checked at the end."""
        assert self.parent is not None
        stored = next(o for o in self.parent.manifest.objects if o.role == "backup_manifest")
        try:
            with open_object(self.parent, stored) as reader:
                while data := reader.read(READ_SIZE):
                    yield data
                reader.finish()
        except IntegrityError as exc:
            raise IntegrityError(
                f"the parent backup {self.parent.backup_id} is damaged: {exc.message}",
                hint="take a full backup (`ebk backup --type physical`); keep the damaged "
                "backup for investigation",
            ) from None

    def require_parent_still_listed(self, repo: Repository) -> None:
        """Just before the new manifest is written: the parent was not deleted meanwhile."""
        if self.parent is None:
            return
        try:
            repo.read_manifest(self.parent.backup_id)
        except BackupNotFound:
            raise IntegrityError(
                f"backup {self.parent.backup_id}, the parent of this incremental backup, was "
                "deleted while it ran; the incremental was not kept",
                hint="take the backup again (it builds on another parent or is a full backup)",
            ) from None


def plan_incremental(
    config: Config,
    repo: Repository,
    providers: Sequence[KeyProvider],
    conn: psycopg.Connection | None = None,
) -> IncrementalPlan:
    """Refuse servers before 17 and summarize_wal off; choose and open the parent."""
    owned = conn is None
    c = conn if conn is not None else connect(config.postgres)
    try:
        return _plan(config, repo, providers, c)
    finally:
        if owned:
            c.close()


def _plan(
    config: Config,
    repo: Repository,
    providers: Sequence[KeyProvider],
    conn: psycopg.Connection,
) -> IncrementalPlan:
    at = where(config.postgres)
    info = cluster_info(config.postgres, conn)
    require_incremental_support(info.major, at)
    require_summarize_wal(conn, at)
    timeline = current_timeline(conn)
    parent = choose_parent(
        repo.list_backups().backups,
        cluster=info.system_identifier,
        major=info.major,
        timeline=timeline,
    )
    if parent is None:
        return IncrementalPlan(
            None,
            f"no complete physical backup of cluster {info.system_identifier} "
            f"(PostgreSQL {info.major}, timeline {timeline}) to build on",
        )
    assert parent.start_lsn is not None  # choose_parent requires it
    coverage = summaries_cover(conn, since_lsn=parent.start_lsn, timeline=timeline)
    if coverage.covered is False:
        return IncrementalPlan(None, f"backup {parent.backup_id}: {coverage.reason}")
    # The parent's own chain must restore, or the new backup would not either.
    if parent.parent is not None:
        authenticated_chain(repo, parent)
    unwrapping = [p for p in providers if not getattr(p, "wrap_only", False)]
    opened = open_backup(repo, parent, unwrapping, kind="physical")
    log.info(
        "incremental backup planned",
        parent=parent.backup_id,
        chain_root=parent.chain_root or parent.backup_id,
        depth=(parent.chain_depth or 0) + 1,
    )
    return IncrementalPlan(opened)
