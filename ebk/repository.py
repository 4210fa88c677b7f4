"""The repository layout on top of any Storage.

    backups/<id>/key.json         the wrapped data key (rewritten by KEK rotation)
    backups/<id>/<name>.ebk       encrypted payload objects
    backups/<id>/manifest.json    written last: its presence makes the backup complete

Deletion runs the other way: manifest first, so a half-deleted backup is
never listed as restorable.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from ebk.errors import BackupNotFound, ObjectNotFound
from ebk.keys.envelope import KeyObject
from ebk.manifest import Manifest
from ebk.storage.base import Storage

MARKER = "ebk-repository.json"
BACKUPS = "backups/"
KEY_OBJECT = "key.json"
MANIFEST = "manifest.json"


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable by time, unique across hosts: 20261128T142301Z-3fa9c1."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def object_name(backup_id: str, name: str) -> str:
    return f"{BACKUPS}{backup_id}/{name}"


@dataclass(frozen=True)
class IncompleteBackup:
    backup_id: str
    objects: list[str]
    size: int


class Repository:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def initialize(self) -> bool:
        """Write the repository marker; returns False when it already existed."""
        if self.storage.exists(MARKER):
            return False
        doc = {
            "format": "ebk-repository",
            "version": 1,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.storage.put_bytes(MARKER, json.dumps(doc, indent=2).encode() + b"\n")
        return True

    def write_key_object(self, key_object: KeyObject) -> None:
        self.storage.put_bytes(object_name(key_object.backup_id, KEY_OBJECT), key_object.to_json())

    def read_key_object(self, backup_id: str) -> KeyObject:
        name = object_name(backup_id, KEY_OBJECT)
        try:
            raw = self.storage.get_bytes(name)
        except ObjectNotFound:
            raise BackupNotFound(
                f"backup {backup_id} has no key object ({name}); it cannot be decrypted"
            ) from None
        return KeyObject.from_json(raw, where=name)

    def write_manifest(self, manifest: Manifest) -> None:
        self.storage.put_bytes(object_name(manifest.backup_id, MANIFEST), manifest.to_json())

    def read_manifest(self, backup_id: str) -> Manifest:
        name = object_name(backup_id, MANIFEST)
        try:
            raw = self.storage.get_bytes(name)
        except ObjectNotFound:
            raise BackupNotFound(
                f"no complete backup {backup_id} in {self.storage.url}",
                hint="`ebk list` shows the complete backups",
            ) from None
        manifest = Manifest.from_json(raw, where=name)
        if manifest.backup_id != backup_id:
            raise BackupNotFound(f"{name} describes backup {manifest.backup_id}, not {backup_id}")
        return manifest

    def _ids(self) -> tuple[dict[str, list[str]], dict[str, int]]:
        objects: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        for info in self.storage.list(BACKUPS):
            backup_id, _, rest = info.name[len(BACKUPS) :].partition("/")
            if rest:
                objects.setdefault(backup_id, []).append(rest)
                sizes[backup_id] = sizes.get(backup_id, 0) + info.size
        return objects, sizes

    def list_backups(self) -> list[Manifest]:
        """Complete backups, oldest first."""
        objects, _ = self._ids()
        complete = sorted(i for i, names in objects.items() if MANIFEST in names)
        return [self.read_manifest(i) for i in complete]

    def list_incomplete(self) -> list[IncompleteBackup]:
        """Backups without a manifest: interrupted, or still being written."""
        objects, sizes = self._ids()
        return [
            IncompleteBackup(i, sorted(names), sizes.get(i, 0))
            for i, names in sorted(objects.items())
            if MANIFEST not in names
        ]

    def resolve(self, ref: str, *, kind: str | None = None) -> Manifest:
        """A backup id, or 'latest': the newest complete backup (of ``kind`` when given)."""
        if ref == "latest":
            backups = [m for m in self.list_backups() if kind is None or m.kind == kind]
            if not backups:
                what = f"{kind} backup" if kind else "backup"
                raise BackupNotFound(
                    f"the repository {self.storage.url} holds no complete {what}",
                    hint=f"take one with `ebk backup{' --type ' + kind if kind else ''}`",
                )
            return backups[-1]
        return self.read_manifest(ref)

    def delete_backup(self, backup_id: str) -> None:
        """Manifest first (the backup stops being listed), then data, key object last."""
        objects, _ = self._ids()
        names = objects.get(backup_id)
        if not names:
            raise BackupNotFound(f"no backup {backup_id} in {self.storage.url}")
        if MANIFEST in names:
            self.storage.delete(object_name(backup_id, MANIFEST))
        for name in names:
            if name not in (MANIFEST, KEY_OBJECT):
                self.storage.delete(object_name(backup_id, name))
        if KEY_OBJECT in names:
            self.storage.delete(object_name(backup_id, KEY_OBJECT))
