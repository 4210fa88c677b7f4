"""The repository: the one door to storage for every read and write of backups.

Nothing outside this package (and storage/ itself) calls a Storage method; a
test walks the code and fails otherwise.  Mutations of what other backups or
readers depend on (deleting backups, rewriting key objects, removing
leftovers, migrating the layout) take a RepositoryLease and re-check it before
every step.  Every document read from storage is size-capped before it is
parsed; what it says is still unauthenticated until the reader verifies it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from ebk.errors import (
    BackupNotFound,
    EbkError,
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    RepositoryNotInitialized,
    StorageError,
)
from ebk.keys.envelope import MAX_KEY_OBJECT_SIZE, KeyObject
from ebk.manifest import MAX_MANIFEST_SIZE, Manifest
from ebk.repository.cache import HighWaterMark, ManifestCache, VerifiedDigests
from ebk.repository.keyevents import KeyEventLog
from ebk.repository.layout import (
    BACKUPS,
    KEY_OBJECT,
    LAYOUT_VERSION,
    LEGACY_MANIFEST,
    MANIFESTS,
    MARKER,
    backup_id_time,
    is_backup_id,
    legacy_manifest_name,
    manifest_name,
    new_backup_id,
    object_name,
    stream_context,
)
from ebk.repository.lease import RepositoryLease
from ebk.repository.shred import shred_backup, tombstoned, without_key_object
from ebk.repository.verifications import VerificationStore
from ebk.repository.writer import MAX_WRITER_KEY_SIZE, WRITER_KEY_OBJECT, TrustedWriters
from ebk.storage.base import IncompleteUpload, ObjectInfo, ObjectWriter, Storage

__all__ = [
    "Catalog",
    "IncompleteBackup",
    "Problem",
    "Repository",
    "RepositoryLease",
    "new_backup_id",
    "object_name",
    "stream_context",
]


MAX_MARKER_SIZE = 64 * 1024
READ_CHUNK = 64 * 1024
READ_WORKERS = 16  # manifests fetched concurrently when listing an object store


@dataclass(frozen=True)
class Problem:
    """A manifest (or name) that could not be used, and why; never counted as a backup."""

    name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"object": self.name, "reason": self.reason}


def _claimed_time(problem: Problem) -> datetime | None:
    """The start time a problem's object name claims (unauthenticated: for the guard only)."""
    if not problem.name.startswith(MANIFESTS):
        return None
    return backup_id_time(problem.name[len(MANIFESTS) :].removesuffix(".json"))


@dataclass
class Catalog:
    """The complete backups (oldest first) and what was skipped."""

    backups: list[Manifest] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # Backups written by ebk 0.1 (unsigned): restorable by id, listed once re-signed.
    legacy: set[str] = field(default_factory=set)
    # The newest backup this host saw before, now gone with nothing newer (rollback?).
    missing_newest: str | None = None
    # Signed manifests whose key object was destroyed by a delete (crypto-shredded):
    # never listed or restorable; `ebk repo check --clean` finishes their deletion.
    shredded: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IncompleteBackup:
    """Objects under backups/<id>/ without a manifest: interrupted, or still being written."""

    backup_id: str
    objects: list[str]
    size: int
    last_modified: datetime | None


@dataclass(frozen=True)
class RepositoryMarker:
    layout: int
    repository_id: str | None


def _iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _sort_key(m: Manifest) -> tuple[datetime, str]:
    try:
        when = datetime.fromisoformat(m.start_time)
    except ValueError:
        when = datetime.min
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when, m.backup_id


class Repository:
    def __init__(
        self,
        storage: Storage,
        *,
        cache: ManifestCache | None = None,
        trust: Callable[[], TrustedWriters] | None = None,
        verified: VerifiedDigests | None = None,
        highwater: HighWaterMark | None = None,
    ) -> None:
        self._storage = storage
        self._cache = cache
        self._verified = verified
        self._highwater = highwater
        # The writer keys readers trust, resolved on first need (pinned, or via the KEK).
        self._trust = trust
        self._trusted: TrustedWriters | None = None
        # Object stores answer many small GETs best concurrently; a local disk does not.
        self._parallel_reads = not storage.url.startswith("file:")

    @property
    def url(self) -> str:
        return self._storage.url

    # -- the repository itself ----------------------------------------------------------

    def marker(self) -> RepositoryMarker | None:
        try:
            raw = self._read_capped(MARKER, MAX_MARKER_SIZE)
        except ObjectNotFound:
            return None
        try:
            doc = json.loads(raw)
            layout = int(doc.get("layout", doc.get("version", 1)))
            repo_id = doc.get("repository_id")
            return RepositoryMarker(layout, repo_id if isinstance(repo_id, str) else None)
        except (ValueError, TypeError, AttributeError, RecursionError):
            raise IntegrityError(
                f"the repository marker {MARKER} in {self.url} is malformed",
                hint="it was damaged or not written by ebk; check repository.url",
            ) from None

    def initialize(self) -> bool:
        """Write the repository marker; returns False when it already existed."""
        doc = {
            "format": "ebk-repository",
            "layout": LAYOUT_VERSION,
            "repository_id": f"repo-{secrets.token_hex(8)}",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            self._storage.put_if_absent(MARKER, json.dumps(doc, indent=2).encode() + b"\n")
        except ObjectExists:
            return False
        return True

    def require_initialized(self) -> RepositoryMarker:
        """Backups go only into a repository `ebk init` created (a typo'd URL is not one)."""
        marker = self.marker()
        if marker is None:
            raise RepositoryNotInitialized(
                f"{self.url} is not an ebk repository (no {MARKER})",
                hint="check repository.url; for a new repository run `ebk init` "
                "(or `ebk init --repository-only` when the key already exists)",
            )
        return marker

    def probe(self) -> None:
        """Prove the repository is reachable and readable (the daemon's startup check)."""
        next(iter(self._storage.list(MANIFESTS)), None)

    # -- the writer key ------------------------------------------------------------------

    def trusted_writers(self) -> TrustedWriters:
        if self._trusted is None:
            if self._trust is None:
                raise IntegrityError(
                    f"no writer key is trusted for {self.url}; refusing to use its manifests",
                    hint="pin repository.writer_keys, or configure the KEK that wraps it",
                )
            self._trusted = self._trust()
        return self._trusted

    def read_writer_key_object(self) -> bytes:
        try:
            return self._read_capped(WRITER_KEY_OBJECT, MAX_WRITER_KEY_SIZE)
        except ObjectNotFound:
            raise RepositoryNotInitialized(
                f"{self.url} has no writer key ({WRITER_KEY_OBJECT}): it was created by ebk 0.1",
                hint="run `ebk repo migrate` once (it creates the key and re-signs old backups)",
            ) from None

    def create_writer_key_object(self, raw: bytes) -> bool:
        """Store the wrapped writer key unless one exists; True when this one was stored."""
        try:
            self._storage.put_if_absent(WRITER_KEY_OBJECT, raw)
        except ObjectExists:
            return False
        return True

    # -- writing one backup -------------------------------------------------------------

    def open_object_writer(self, backup_id: str, name: str) -> ObjectWriter:
        return self._storage.open_write(object_name(backup_id, name))

    def create_key_object(self, key_object: KeyObject) -> None:
        """A new backup's key object; never overwrites one that exists."""
        self._storage.put_if_absent(
            object_name(key_object.backup_id, KEY_OBJECT), key_object.to_json()
        )

    def commit_manifest(self, manifest: Manifest) -> None:
        """Make a backup complete, only if every object it lists is stored as listed."""
        stored = {
            info.name[len(BACKUPS) + len(manifest.backup_id) + 1 :]: info.size
            for info in self._storage.list(f"{BACKUPS}{manifest.backup_id}/")
        }
        missing = [o.name for o in manifest.objects if stored.get(o.name) != o.stored_size] + (
            [] if KEY_OBJECT in stored else [KEY_OBJECT]
        )
        if missing:
            raise StorageError(
                f"backup {manifest.backup_id} lost object(s) while it was written: "
                f"{', '.join(missing)}; it was not marked complete",
                hint="another process removed them (`ebk repo check --clean` with a short "
                "--older-than?); take the backup again",
            )
        self._storage.put_if_absent(manifest_name(manifest.backup_id), manifest.to_json())

    def discard_unfinished(self, backup_id: str) -> None:
        """Remove a failed backup's own objects; never one that has a manifest."""
        if self._storage.exists(manifest_name(backup_id)):
            return
        names = [i.name for i in self._storage.list(f"{BACKUPS}{backup_id}/")]
        for name in sorted(names, key=lambda n: n.endswith(f"/{KEY_OBJECT}")):
            self._storage.delete(name)

    # -- reading ------------------------------------------------------------------------

    def _read_capped(self, name: str, cap: int) -> bytes:
        """At most ``cap`` bytes of a document, refused past that (before any parsing)."""
        parts: list[bytes] = []
        size = 0
        with self._storage.open_read(name) as stream:
            # Small reads: read(cap) would allocate the whole cap for every small document.
            while size <= cap and (part := stream.read(min(READ_CHUNK, cap + 1 - size))):
                parts.append(part)
                size += len(part)
        raw = b"".join(parts)
        if len(raw) > cap:
            raise IntegrityError(
                f"{name} in {self.url} is larger than any ebk document ({cap} bytes); "
                "refusing to read it",
                hint="it was not written by ebk; `ebk repo check` reports it",
            )
        return bytes(raw)

    def read_key_object(self, backup_id: str) -> KeyObject:
        name = object_name(backup_id, KEY_OBJECT)
        try:
            raw = self._read_capped(name, MAX_KEY_OBJECT_SIZE)
        except ObjectNotFound:
            raise BackupNotFound(
                f"backup {backup_id} is shredded: its key object ({name}) was destroyed, so "
                "its data can never be decrypted",
                hint="it was deleted (`ebk delete`, retention) and its deletion was "
                "interrupted, or its key object was removed; `ebk repo check --clean` removes "
                "the rest; restore another backup (`ebk list`)",
            ) from None
        return KeyObject.from_json(raw, where=name)

    def open_object_reader(self, backup_id: str, name: str) -> BinaryIO:
        return self._storage.open_read(object_name(backup_id, name))

    def _parse_manifest(self, name: str, backup_id: str) -> Manifest:
        manifest = Manifest.from_json(self._read_capped(name, MAX_MANIFEST_SIZE), where=name)
        if manifest.backup_id != backup_id:
            raise IntegrityError(f"{name} describes backup {manifest.backup_id}, not {backup_id}")
        return manifest

    def read_manifest(self, backup_id: str) -> Manifest:
        if not is_backup_id(backup_id):
            raise BackupNotFound(
                f"{backup_id!r} is not a backup id",
                hint="`ebk list` shows the complete backups; or use `latest`",
            )
        for name in (manifest_name(backup_id), legacy_manifest_name(backup_id)):
            try:
                manifest = self._parse_manifest(name, backup_id)
            except ObjectNotFound:
                continue
            if manifest.manifest_version != 1:  # 0.1's unsigned ones: only by id, MAC-checked
                manifest.verify_signature(self.trusted_writers())
            return manifest
        raise BackupNotFound(
            f"no complete backup {backup_id} in {self.url}",
            hint="`ebk list` shows the complete backups",
        )

    def _manifest_objects(self, catalog: Catalog) -> Iterator[tuple[ObjectInfo, str]]:
        """(listing entry, backup id) of every manifest, both layouts; odd names are problems."""
        for info in self._storage.list(MANIFESTS):
            backup_id = info.name[len(MANIFESTS) :].removesuffix(".json")
            if not info.name.endswith(".json") or not is_backup_id(backup_id):
                catalog.problems.append(Problem(info.name, "not a manifest name ebk writes"))
            elif info.size > MAX_MANIFEST_SIZE:
                catalog.problems.append(Problem(info.name, f"implausibly large ({info.size} B)"))
            else:
                yield info, backup_id
        marker = self.marker()
        if marker is None or marker.layout < LAYOUT_VERSION:
            for info in self._storage.list(BACKUPS):
                backup_id, _, rest = info.name[len(BACKUPS) :].partition("/")
                if rest == LEGACY_MANIFEST and is_backup_id(backup_id):
                    yield info, backup_id

    def _fetch_manifest(self, info: ObjectInfo) -> bytes:
        cached = self._cache.get(info) if self._cache else None
        if cached is not None:
            return cached
        raw = self._read_capped(info.name, MAX_MANIFEST_SIZE)
        if self._cache:
            self._cache.put(info, raw)
        return raw

    def list_backups(self) -> Catalog:
        """Every complete backup whose manifest parses, oldest first; the rest as problems."""
        catalog = Catalog()
        entries = list(self._manifest_objects(catalog))
        if self._cache is not None:
            self._cache.keep_only([info for info, _ in entries])

        def fetch(entry: tuple[ObjectInfo, str]) -> bytes | Problem:
            try:
                return self._fetch_manifest(entry[0])
            except ObjectNotFound:
                return Problem(entry[0].name, "vanished while listing (deleted meanwhile)")
            except IntegrityError as exc:
                return Problem(entry[0].name, exc.message)

        if self._parallel_reads:
            with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
                fetched = list(pool.map(fetch, entries))
        else:
            fetched = [fetch(e) for e in entries]
        seen: set[str] = set()
        for (info, backup_id), raw in zip(entries, fetched, strict=True):
            if isinstance(raw, Problem):
                catalog.problems.append(raw)
                continue
            try:
                manifest = Manifest.from_json(raw, where=info.name)
                if manifest.manifest_version == 1:  # unsigned (0.1): never listed or counted
                    catalog.legacy.add(backup_id)
                    continue
                self._verify_listed(manifest, raw)
            except IntegrityError as exc:
                catalog.problems.append(Problem(info.name, exc.message))
                continue
            if manifest.backup_id != backup_id:
                catalog.problems.append(
                    Problem(info.name, f"describes backup {manifest.backup_id}, not {backup_id}")
                )
            elif backup_id not in seen:  # mid-migration both layouts hold it
                seen.add(backup_id)
                catalog.backups.append(manifest)
        catalog.backups.sort(key=_sort_key)
        self._set_aside_shredded(catalog)
        if self._verified is not None:
            self._verified.save()
        self._check_high_water(catalog)
        return catalog

    def _set_aside_shredded(self, catalog: Catalog) -> None:
        """Backups with a tombstone and no key object any more: shredded, not listed."""
        tombs = tombstoned(self._storage) & {m.backup_id for m in catalog.backups}
        gone = without_key_object(self._storage, sorted(tombs)) if tombs else set()
        if gone:
            catalog.shredded = sorted(gone)
            catalog.backups = [m for m in catalog.backups if m.backup_id not in gone]

    def key_object_exists(self, backup_id: str) -> bool:
        return not without_key_object(self._storage, [backup_id])

    def shredded_backups(self) -> list[str]:
        """Backups whose manifest is still there but whose key object is gone (full listing)."""
        catalog = Catalog()
        complete = {backup_id for _, backup_id in self._manifest_objects(catalog)}
        keyed = set()
        for info in self._storage.list(BACKUPS):
            backup_id, _, rest = info.name[len(BACKUPS) :].partition("/")
            if rest == KEY_OBJECT:
                keyed.add(backup_id)
        return sorted(complete - keyed)

    def _check_high_water(self, catalog: Catalog) -> None:
        """The newest backup seen here before must still be there (or something newer)."""
        if self._highwater is None:
            return
        mark = self._highwater.read()
        newest = catalog.backups[-1] if catalog.backups else None
        present = {m.backup_id for m in catalog.backups}
        if mark is not None and mark[1] not in present:
            marked_time = datetime.fromisoformat(mark[0]) if _iso(mark[0]) else None
            if newest is None or (marked_time is not None and _sort_key(newest)[0] < marked_time):
                catalog.missing_newest = mark[1]
                return
        if newest is not None:
            self._highwater.write(newest.start_time, newest.backup_id)

    def accept_missing_newest(self) -> None:
        """An operator confirmed that the newest backup was deleted on purpose."""
        if self._highwater is not None:
            self._highwater.forget()

    def _verify_listed(self, manifest: Manifest, raw: bytes) -> None:
        """The writer signature, unless these exact bytes verified here before."""
        trusted = self.trusted_writers()
        if self._verified is None:
            manifest.verify_signature(trusted)
            return
        digest = self._verified.digest(raw)
        signer = manifest.auth.get("sig", "").split(":")[1:2]
        if digest in self._verified and signer and trusted.trusts(signer[0]):
            return
        manifest.verify_signature(trusted)
        self._verified.add(digest)

    def resolve(self, ref: str, *, kind: str | None = None) -> Manifest:
        """A backup id, or 'latest': the newest complete backup (of ``kind`` when given)."""
        if ref != "latest":
            return self.read_manifest(ref)
        catalog = self.list_backups()
        if catalog.missing_newest is not None:
            raise IntegrityError(
                f"refusing to choose `latest`: backup {catalog.missing_newest}, the newest this "
                "host has seen in the repository, is gone and nothing newer replaced it",
                hint="someone may have deleted it to roll `latest` back; if it was deleted on "
                "purpose, accept it with `ebk repo check --accept-missing-newest`, or restore "
                "a backup by its id",
            )
        backups = [m for m in catalog.backups if kind is None or m.kind == kind]
        newest = _sort_key(backups[-1])[0] if backups else datetime.min.replace(tzinfo=UTC)
        # Rollback guard: something that claims to be newer and does not authenticate
        # means `latest` cannot be trusted to be the latest; the operator decides.
        suspicious = [p for p in catalog.problems if (_claimed_time(p) or newest) > newest]
        if suspicious:
            first = suspicious[-1]
            raise IntegrityError(
                f"refusing to choose `latest`: {first.name}, newer than every authenticated "
                f"backup, failed authentication ({first.reason})",
                hint="someone with write access to the repository may be hiding the newest "
                "backup; investigate, then restore a backup by its id (`ebk list` shows them)",
            )
        if not backups:
            what = f"{kind} backup" if kind else "backup"
            raise BackupNotFound(
                f"the repository {self.url} holds no complete {what}",
                hint=f"take one with `ebk backup{' --type ' + kind if kind else ''}`",
            )
        return backups[-1]

    # -- mutations under the lease ------------------------------------------------------

    def lease(self, purpose: str, **kwargs: float) -> RepositoryLease:
        return RepositoryLease(self._storage, purpose=purpose, **kwargs)  # type: ignore[arg-type]

    def delete_backup(self, backup_id: str, lease: RepositoryLease) -> bool:
        """Crypto-shred: key object first, then data, manifest last (ebk/repository/shred.py).

        True when the key object was destroyed by this call.
        """
        mark = self._highwater.read() if self._highwater is not None else None
        if self._highwater is not None and mark is not None and mark[1] == backup_id:
            self._highwater.forget()  # deleted here, on purpose: not a rollback
        return shred_backup(self._storage, backup_id, lease)

    def replace_manifest(self, manifest: Manifest, lease: RepositoryLease) -> None:
        """Re-signing (migration): the new manifest replaces any copy at layout 2's place."""
        lease.check()
        self._storage.put_bytes(manifest_name(manifest.backup_id), manifest.to_json())

    def remove_legacy_manifest(self, backup_id: str, lease: RepositoryLease) -> None:
        lease.check()
        self._storage.delete(legacy_manifest_name(backup_id))

    def write_marker(self, lease: RepositoryLease, *, layout: int) -> RepositoryMarker:
        """The marker at ``layout``, keeping the repository id (or giving one to a 0.1 one)."""
        lease.check()
        marker = self.marker()
        repo_id = (marker.repository_id if marker else None) or f"repo-{secrets.token_hex(8)}"
        doc = {
            "format": "ebk-repository",
            "layout": layout,
            "repository_id": repo_id,
            "migrated": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._storage.put_bytes(MARKER, json.dumps(doc, indent=2).encode() + b"\n")
        return RepositoryMarker(layout, repo_id)

    def replace_writer_key_object(self, raw: bytes, lease: RepositoryLease) -> None:
        """Rewrap: the re-wrapped writer key replaces the old one atomically."""
        lease.check()
        self._storage.put_bytes(WRITER_KEY_OBJECT, raw)

    def replace_key_object(self, key_object: KeyObject, lease: RepositoryLease) -> None:
        """Rewrap: the new key object replaces the old one atomically."""
        lease.check()
        self._storage.put_bytes(object_name(key_object.backup_id, KEY_OBJECT), key_object.to_json())

    def incomplete_backups(self) -> list[IncompleteBackup]:
        """Backups without a manifest: interrupted, or still being written."""
        catalog = Catalog()
        complete = {backup_id for _, backup_id in self._manifest_objects(catalog)}
        objects: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        modified: dict[str, datetime] = {}
        for info in self._storage.list(BACKUPS):
            backup_id, _, rest = info.name[len(BACKUPS) :].partition("/")
            if not rest or backup_id in complete:
                continue
            objects.setdefault(backup_id, []).append(rest)
            sizes[backup_id] = sizes.get(backup_id, 0) + info.size
            if info.modified is not None:
                modified[backup_id] = max(modified.get(backup_id, info.modified), info.modified)
        return [
            IncompleteBackup(i, sorted(names), sizes.get(i, 0), modified.get(i))
            for i, names in sorted(objects.items())
        ]

    def unfinished_uploads(self) -> list[IncompleteUpload]:
        """Uploads started and never committed (S3 multipart, Azure blocks, local partials)."""
        return self._storage.list_incomplete()

    def remove_upload(self, upload: IncompleteUpload, lease: RepositoryLease) -> None:
        lease.check()
        self._storage.remove_incomplete(upload)

    def remove_incomplete_backup(self, backup_id: str, lease: RepositoryLease) -> None:
        """Delete the objects of an incomplete backup, unless it completed meanwhile."""
        lease.check()
        if self._storage.exists(manifest_name(backup_id)):
            raise EbkError(f"backup {backup_id} completed meanwhile; it was kept")
        self.discard_unfinished(backup_id)

    def unsigned_backups(self) -> list[str]:
        """Backups whose manifest was written by ebk 0.1 (either layout): to re-sign."""
        return sorted(self.list_backups().legacy)

    def key_events(self) -> KeyEventLog:
        """The signed, append-only key-event log (ebk/repository/keyevents.py)."""
        return KeyEventLog(self._storage)

    def verifications(self) -> VerificationStore:
        """Signed verification records of this repository's backups (`ebk verify`)."""
        return VerificationStore(self._storage, self.trusted_writers, self.url)

    def close(self) -> None:
        self._storage.close()
