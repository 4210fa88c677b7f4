"""Synthetic complete backups for the key-lifecycle tests and bench/rewrap.py.

Each is what ebk writes minus the payload: a key object wrapped by the
configured providers and a manifest sealed with its data key and signed by the
repository's writer key, so listing, status and rewrap treat it as a backup.
The returned data keys let a test prove every key object still opens.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from ebk.app.maintenance import ensure_writer_key
from ebk.keys.envelope import KeyObject, new_data_key
from ebk.manifest import Manifest
from ebk.repository.layout import new_backup_id
from ebk.runtime import Runtime

CLUSTER = "7713232264135747606"


def prepare_backup(runtime: Runtime, when: datetime) -> tuple[Manifest, KeyObject, bytes]:
    """One backup's key object and signed manifest, not yet stored."""
    writer = ensure_writer_key(runtime)
    backup_id = new_backup_id(when)
    dek, key_object = new_data_key(runtime.key_providers, backup_id=backup_id, cluster=CLUSTER)
    manifest = Manifest(
        backup_id=backup_id,
        kind="logical",
        ebk_version="test",
        system_identifier=CLUSTER,
        server_version="15.0",
        start_time=when.isoformat(timespec="microseconds"),
        stop_time=(when + timedelta(seconds=1)).isoformat(),
        dek_id=key_object.dek_id,
        key_slots=[f"{s.provider}/{s.kek_id}" for s in key_object.slots],
        databases=["synthetic"],
    )
    manifest.seal(dek)
    manifest.sign(writer)
    return manifest, key_object, dek


def add_backups(runtime: Runtime, count: int, *, workers: int = 16) -> dict[str, bytes]:
    """``count`` signed, payload-less backups, started a day ago; {backup_id: data key}."""
    repo = runtime.repository
    ensure_writer_key(runtime)
    base = datetime.now(UTC) - timedelta(days=1)

    def one(i: int) -> tuple[str, bytes]:
        manifest, key_object, dek = prepare_backup(runtime, base + timedelta(seconds=i))
        repo.create_key_object(key_object)
        repo.commit_manifest(manifest)
        return manifest.backup_id, dek

    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(one, range(count)))
