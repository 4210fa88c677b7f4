"""A restore session: choose the backup, check the target, open it, restore it.

The CLI and (later) verification run restores through ``restore()``: the
backup is resolved, the preflight checks the target and every tablespace
target it will write, the data key is unwrapped with the configured providers
(or only the offline recovery identity) and the manifest authenticated before
any byte is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ebk.errors import ConfigError
from ebk.keys.base import KeyProvider
from ebk.keys.recovery import RecoveryIdentity
from ebk.manifest import Manifest
from ebk.preflight.gate import enforce
from ebk.repository.writer import trusted_from
from ebk.restore.chain import open_chain, restore_chain, staging_preflight_paths
from ebk.restore.logical import restore_logical
from ebk.restore.physical import restore_physical, tablespace_targets
from ebk.restore.session import open_backup
from ebk.runtime import Runtime


@dataclass(frozen=True)
class PhysicalTarget:
    """Restore into an empty directory (and tablespaces to their targets)."""

    directory: Path
    tablespace_map: Mapping[str, str] = field(default_factory=dict)
    owner: tuple[int, int] | None = None
    verify: bool = True


@dataclass(frozen=True)
class LogicalTarget:
    """Restore one database of a logical backup into a database."""

    database_name: str
    source_database: str | None = None
    create: bool = False
    with_globals: bool = False


def _providers(runtime: Runtime, recovery_key: Path | None) -> list[KeyProvider]:
    """The configured providers, or only the recovery identity (and the writer keys it pins).

    A recovery recipient is public, so anyone can wrap a data key for it: a
    recovery restore accepts only manifests the repository's writer signed, by
    keys pinned in the config or in the identity file, never derived via a KMS.
    """
    if recovery_key is None:
        return runtime.key_providers
    identity = RecoveryIdentity(recovery_key)
    pinned = {f"{recovery_key}: writer-key {i}": k for i, k in enumerate(identity.writer_keys)}
    pinned.update(
        {
            f"repository.writer_keys[{i}]": k
            for i, k in enumerate(runtime.config.repository.writer_keys)
        }
    )
    if not pinned:
        raise ConfigError(
            "a restore with --recovery-key needs the repository's writer public key, to refuse "
            "backups anyone could have forged for the (public) recovery recipient",
            hint="add `# writer-key: ebkwriter1…` (from `ebk keys writer-key`) to the identity "
            "file, or set repository.writer_keys in the config",
        )
    runtime.trust_override = trusted_from(pinned)
    return [identity]


def restore(
    runtime: Runtime,
    ref: str,
    target: PhysicalTarget | LogicalTarget,
    *,
    recovery_key: Path | None = None,
    progress: bool | None = None,
) -> Manifest:
    """Restore backup ``ref`` (an id, or ``latest`` of the kind the target needs)."""
    kind = "physical" if isinstance(target, PhysicalTarget) else "logical"
    providers = _providers(runtime, recovery_key)
    manifest = runtime.repository.resolve(ref, kind=kind)
    if isinstance(target, PhysicalTarget) and manifest.incremental:
        spaces = tablespace_targets(manifest, target.tablespace_map)
        enforce(  # the staging area beside the target holds plaintext too
            runtime.config,
            purpose="restore",
            restore_target=target.directory,
            tablespace_targets=[*spaces.values(), *staging_preflight_paths(target.directory)],
        )
        chain = open_chain(runtime.repository, manifest, providers)  # all before any write
        restore_chain(
            chain,
            target.directory,
            tablespace_map=target.tablespace_map,
            owner=target.owner,
            verify=target.verify,
            bin_dir=runtime.config.postgres.bin_dir,
            progress=progress,
        )
    elif isinstance(target, PhysicalTarget):
        spaces = tablespace_targets(manifest, target.tablespace_map)
        enforce(
            runtime.config,
            purpose="restore",
            restore_target=target.directory,
            tablespace_targets=list(spaces.values()),
        )
        backup = open_backup(runtime.repository, manifest, providers, kind=kind)
        restore_physical(
            backup,
            target.directory,
            tablespace_map=target.tablespace_map,
            owner=target.owner,
            verify=target.verify,
            bin_dir=runtime.config.postgres.bin_dir,
            progress=progress,
        )
    else:
        if not target.database_name:
            raise ConfigError("the target database name is empty")
        enforce(runtime.config, purpose="restore")
        backup = open_backup(runtime.repository, manifest, providers, kind=kind)
        restore_logical(
            backup,
            runtime.config.postgres,
            target_db=target.database_name,
            database=target.source_database,
            create=target.create,
            with_globals=target.with_globals,
        )
    return manifest
