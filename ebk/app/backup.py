"""Taking a backup the one way: preflight, key check, cluster lock, then the backup."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ebk.app.maintenance import ensure_writer_key
from ebk.backup import take_backup
from ebk.errors import Interrupted
from ebk.manifest import Manifest
from ebk.postgres.advisory_lock import cluster_backup_lock
from ebk.preflight.gate import enforce
from ebk.runtime import Runtime


def run_backup(
    runtime: Runtime,
    *,
    kind: str,
    databases: Sequence[str] = (),
    progress: bool | None = None,
    cancel: threading.Event | None = None,
) -> Manifest:
    """One complete backup, or an EbkError and nothing listed.

    Order matters: nothing touches the repository before the volumes are known
    to be encrypted (preflight), the key provider works and the repository is
    one ebk created; the cluster lock's connection carries the metadata queries.
    """
    if cancel is not None and cancel.is_set():
        raise Interrupted("shutting down; the backup was not started")
    config = runtime.config
    enforce(config, purpose="backup")
    providers = runtime.checked_key_providers()
    # Refuses a repository `ebk init` never created; the writer key is created by init,
    # or here if init could not reach the KEK.
    writer = ensure_writer_key(runtime)
    with cluster_backup_lock(config.postgres) as conn:
        return take_backup(
            config,
            runtime.repository,
            providers,
            writer,
            kind=kind,
            databases=databases,
            progress=progress,
            cancel=cancel,
            conn=conn,
        )
