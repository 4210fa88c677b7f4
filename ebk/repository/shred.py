"""Crypto-shredding: a deleted backup's key object goes first, so no copy of its data opens.

Order of ``delete`` (under the repository lease, re-checked before each step):

1. ``shredded/<id>`` tombstone: "this backup is being destroyed" (a hint only:
   it is unauthenticated, so it never deletes anything by itself);
2. ``backups/<id>/key.json`` - every slot of the data key, recovery slots
   included: from here on the data is ciphertext nobody can open, even from
   bucket versions or replicas of the data objects;
3. the data objects;
4. the manifest(s);
5. the tombstone.

A backup whose manifest still verifies but whose key object is gone is
*shredded*, not corrupt: `ebk list` leaves it out and says so, `ebk show`
and `ebk restore` name it, `ebk repo check --clean` (or running the delete
again) finishes the job.  A tombstone next to a key object that still exists
(interrupted before step 2, or planted by a bucket writer) changes nothing:
the backup stays listed and restorable.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime

from ebk.errors import BackupNotFound, ObjectNotFound
from ebk.repository.layout import (
    BACKUPS,
    KEY_OBJECT,
    is_backup_id,
    legacy_manifest_name,
    manifest_name,
    object_name,
)
from ebk.repository.lease import RepositoryLease
from ebk.storage.base import Storage

SHREDDED = "shredded/"


def tombstone_name(backup_id: str) -> str:
    return f"{SHREDDED}{backup_id}"


def shred_backup(storage: Storage, backup_id: str, lease: RepositoryLease) -> bool:
    """Destroy one backup, key object first; True when it held a key object until now.

    Idempotent: every step tolerates what an interrupted earlier run already did.
    """
    lease.check()
    names = [i.name for i in storage.list(f"{BACKUPS}{backup_id}/")]
    manifests = [
        n
        for n in (manifest_name(backup_id), legacy_manifest_name(backup_id))
        if n in names or storage.exists(n)
    ]
    tomb = tombstone_name(backup_id)
    if not names and not manifests:
        if storage.exists(tomb):
            storage.delete(tomb)
            return False
        raise BackupNotFound(f"no backup {backup_id} in {storage.url}")
    doc = {"backup_id": backup_id, "shredded": datetime.now(UTC).isoformat(timespec="seconds")}
    storage.put_bytes(tomb, json.dumps(doc).encode() + b"\n")
    key = object_name(backup_id, KEY_OBJECT)
    had_key = key in names
    lease.check()
    if had_key:
        storage.delete(key)
    for name in names:
        if name != key and name not in manifests:
            lease.check()
            storage.delete(name)
    for name in manifests:
        lease.check()
        _delete_quietly(storage, name)
    _delete_quietly(storage, tomb)
    return had_key


def _delete_quietly(storage: Storage, name: str) -> None:
    with contextlib.suppress(ObjectNotFound):
        storage.delete(name)


def tombstoned(storage: Storage) -> set[str]:
    """Backup ids with a tombstone (one LIST of a normally empty prefix)."""
    out = set()
    for info in storage.list(SHREDDED):
        backup_id = info.name[len(SHREDDED) :]
        if is_backup_id(backup_id):
            out.add(backup_id)
    return out


def without_key_object(storage: Storage, backup_ids: Iterable[str]) -> set[str]:
    """Those of ``backup_ids`` whose key object is gone (one HEAD each)."""
    return {b for b in backup_ids if not storage.exists(object_name(b, KEY_OBJECT))}
