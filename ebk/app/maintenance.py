"""Repository maintenance: delete one backup, find and clean leftovers, migrate.

KEK rotation and rewrap live in ebk/app/keylife.py.

Every mutation runs under the repository lease (exit 8 while another ebk
holds it) and re-checks it before each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from ebk.chain import refuse_if_needed
from ebk.errors import EbkError, RepositoryNotInitialized
from ebk.manifest import Manifest
from ebk.repository import IncompleteBackup, Repository
from ebk.repository.layout import BACKUPS, LAYOUT_VERSION, backup_id_time
from ebk.repository.writer import WriterKey, new_writer_key
from ebk.restore.session import open_backup
from ebk.runtime import Runtime
from ebk.storage.base import IncompleteUpload

log = structlog.get_logger("ebk.maintenance")


def delete_backup(repo: Repository, backup_id: str, *, purpose: str = "ebk delete") -> Manifest:
    """Delete one complete backup by its id (never `latest`: deletion names what it deletes)."""
    manifest = repo.read_manifest(backup_id)
    with repo.lease(purpose) as lease:
        refuse_if_needed(repo, manifest)  # under the lease: no deletion races the check
        repo.delete_backup(manifest.backup_id, lease)
    log.info("backup deleted", backup_id=manifest.backup_id, kind=manifest.kind)
    return manifest


# -- leftovers -----------------------------------------------------------------------------


@dataclass
class Leftover:
    """An incomplete backup or an unfinished upload, with what --clean does with it."""

    name: str
    kind: str  # incomplete_backup | unfinished_upload
    last_activity: datetime | None
    old_enough: bool
    size: int = 0
    objects: list[str] = field(default_factory=list)
    removed: bool = False
    note: str = ""
    upload: IncompleteUpload | None = None
    incomplete: IncompleteBackup | None = None


@dataclass
class RepoCheckReport:
    grace: timedelta
    now: datetime
    backups: list[Leftover]
    uploads: list[Leftover]
    # Deleted backups whose key object is already destroyed (an interrupted delete).
    shredded: list[Leftover] = field(default_factory=list)


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def check_leftovers(repo: Repository, *, grace: timedelta, now: datetime) -> RepoCheckReport:
    """What interrupted runs left behind; nothing younger than ``grace`` is removable.

    Age is the time since the newest sign of life: the newest object of an
    incomplete backup (as the store reports it) or the start of an upload, and
    never older than the time in the backup id (stores that report no time).
    """
    cutoff = now - grace
    backups = []
    for inc in repo.incomplete_backups():
        last = _latest(inc.last_modified, backup_id_time(inc.backup_id))
        backups.append(
            Leftover(
                inc.backup_id,
                "incomplete_backup",
                last,
                last is not None and last <= cutoff,
                inc.size,
                inc.objects,
                incomplete=inc,
            )
        )
    uploads = []
    for upload in repo.unfinished_uploads():
        from_id = None
        if upload.name.startswith(BACKUPS):
            from_id = backup_id_time(upload.name[len(BACKUPS) :].split("/", 1)[0])
        last = _latest(upload.started, from_id)
        uploads.append(
            Leftover(
                upload.name,
                "unfinished_upload",
                last,
                last is not None and last <= cutoff,
                upload=upload,
            )
        )
    shredded = [
        Leftover(b, "shredded_backup", backup_id_time(b), True) for b in repo.shredded_backups()
    ]
    return RepoCheckReport(grace, now, backups, uploads, shredded)


def clean_leftovers(repo: Repository, report: RepoCheckReport) -> None:
    """Remove the removable leftovers under the lease; a backup that completed meanwhile stays."""
    if not any(e.old_enough for e in report.backups + report.uploads + report.shredded):
        return
    with repo.lease("ebk repo check --clean") as lease:
        for entry in report.shredded:  # the key is gone: finishing loses nothing
            repo.delete_backup(entry.name, lease)
            entry.removed = True
        for entry in report.uploads:
            if entry.old_enough and entry.upload is not None:
                repo.remove_upload(entry.upload, lease)
                entry.removed = True
        for entry in report.backups:
            if not entry.old_enough:
                continue
            try:
                repo.remove_incomplete_backup(entry.name, lease)
            except EbkError as exc:
                entry.note = exc.message
                continue
            entry.removed = True


def ensure_writer_key(runtime: Runtime) -> WriterKey:
    """The repository's writer key: unwrapped if stored, else created (wrapped by the KEK)."""
    repo = runtime.repository
    marker = repo.require_initialized()
    if marker.repository_id is not None:
        try:
            return runtime.writer_key()
        except RepositoryNotInitialized:
            pass  # no keys/writer.json yet
    if marker.repository_id is None:
        raise RepositoryNotInitialized(
            f"{repo.url} has no repository id", hint="run `ebk repo migrate` once"
        )
    _, raw = new_writer_key(runtime.key_providers[0], marker.repository_id)
    if not repo.create_writer_key_object(raw):
        log.info("another process created the writer key first; using it")
    runtime.__dict__.pop("_writer_key", None)  # read back what won the create-if-absent
    return runtime.writer_key()


@dataclass(frozen=True)
class Migration:
    repository_id: str
    writer_key_id: str
    resigned: list[str]


def migrate_repository(runtime: Runtime) -> Migration:
    """ebk 0.1 -> now: a repository id, a writer key, and every 0.1 manifest re-signed.

    Each 0.1 manifest is first authenticated with its own data key, unwrapped by
    the configured KEK (never by a recovery identity, whose recipient is public):
    only then is it upgraded, MAC'd and signed, and its layout-1 copy removed.
    Idempotent; safe to interrupt; under the repository lease.
    """
    repo = runtime.repository
    repo.require_initialized()
    providers = [p for p in runtime.key_providers if not getattr(p, "wrap_only", False)]
    with repo.lease("ebk repo migrate") as lease:
        current_marker = repo.marker()
        layout = current_marker.layout if current_marker else 1
        # The id first (the writer key is bound to it); layout 2 only once all moved.
        marker = repo.write_marker(lease, layout=layout)
        writer = ensure_writer_key(runtime)
        resigned = []
        for backup_id in repo.unsigned_backups():
            legacy = repo.read_manifest(backup_id)
            opened = open_backup(repo, legacy, providers, kind=legacy.kind)
            current = legacy.upgraded()
            current.seal(opened.dek)
            current.sign(writer)
            repo.replace_manifest(current, lease)
            repo.remove_legacy_manifest(backup_id, lease)
            resigned.append(backup_id)
            log.info("backup re-signed", backup_id=backup_id)
        repo.write_marker(lease, layout=LAYOUT_VERSION)
    return Migration(str(marker.repository_id), writer.key_id, resigned)
