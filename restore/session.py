"""Opening a backup for restore: the one place that checks kind, unwraps and authenticates.

Physical and logical restores (and verification) start from an OpenedBackup:
its data key unwrapped through the configured providers (one KMS call) and its
manifest authenticated with it, so nothing the manifest says is used before
it verifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ebk.errors import IntegrityError, RestoreTargetError, WrongKey
from ebk.keys.base import KeyProvider
from ebk.keys.envelope import open_data_key
from ebk.manifest import Manifest
from ebk.repository import Repository

_HINTS = {
    "physical": "restore it into an empty directory with --to DIR",
    "logical": "restore it into a database with --to-db NAME",
}


@dataclass(frozen=True)
class OpenedBackup:
    repo: Repository
    manifest: Manifest
    dek: bytes

    @property
    def backup_id(self) -> str:
        return self.manifest.backup_id


def open_backup(
    repo: Repository, manifest: Manifest, providers: Sequence[KeyProvider], *, kind: str
) -> OpenedBackup:
    """Unwrap the backup's data key and authenticate its manifest; refuse the wrong kind."""
    if manifest.kind != kind:
        raise RestoreTargetError(
            f"backup {manifest.backup_id} is a {manifest.kind} backup",
            hint=_HINTS.get(manifest.kind, "choose a backup of the other kind"),
        )
    if manifest.manifest_version < 2 and any(p.name == "recovery" for p in providers):
        raise IntegrityError(
            f"backup {manifest.backup_id} was written by ebk 0.1 without a writer signature; "
            "a --recovery-key restore accepts only signed backups",
            hint="run `ebk repo migrate` with the KEK first (it re-signs old backups), or "
            "restore it with the KEK",
        )
    key_object = repo.read_key_object(manifest.backup_id)
    # The manifest is authenticated (signature); the key object's context is bound to the
    # wrapped DEK. A key object from another backup or another cluster sharing the KEK
    # (finding 5) names different ids and is refused before any KMS call.
    bound = key_object.context
    same_backup = key_object.backup_id == manifest.backup_id  # else open_data_key says so
    mismatch = (bound.get("dek_id"), bound.get("cluster")) != (
        manifest.dek_id,
        manifest.system_identifier,
    )
    if same_backup and mismatch:
        raise WrongKey(
            f"the key object of backup {manifest.backup_id} is bound to cluster "
            f"{bound.get('cluster')} and data key {bound.get('dek_id')}, but the manifest "
            f"names cluster {manifest.system_identifier} and data key {manifest.dek_id}",
            hint="the key object was copied from another backup or cluster; restore that "
            "backup's own key.json",
        )
    dek = open_data_key(key_object, providers, backup_id=manifest.backup_id)
    manifest.verify(dek)
    return OpenedBackup(repo, manifest, dek)
