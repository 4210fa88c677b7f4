"""Opening a backup for restore: the one place that checks kind, unwraps and authenticates.

Physical and logical restores (and verification) start from an OpenedBackup:
its data key unwrapped through the configured providers (one KMS call) and its
manifest authenticated with it, so nothing the manifest says is used before
it verifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ebk.errors import IntegrityError, RestoreTargetError
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
    dek = open_data_key(key_object, providers, backup_id=manifest.backup_id)
    manifest.verify(dek)
    return OpenedBackup(repo, manifest, dek)
