"""`ebk preflight`: prove that every path holding database bytes is encrypted at rest."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ebk.cli.output import emit_json
from ebk.errors import PreflightFailed
from ebk.preflight.report import render_table, run_preflight
from ebk.runtime import Runtime


@click.command()
@click.option("--json", "json_output", is_flag=True, help="Print the verdicts as JSON.")
@click.option(
    "--restore-target",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Also check DIR as a physical restore target.",
)
@click.pass_obj
def preflight(config_path: Path | None, json_output: bool, restore_target: Path | None) -> None:
    """Check that every place PostgreSQL and ebk write is encrypted at rest.

    Resolves the data directory (postgres.data_directory, else SHOW
    data_directory), pg_wal, every tablespace, preflight.spool_dir and
    preflight.extra_paths, follows symlinks and bind mounts to the mount and
    its block devices, and reports per path: encrypted (by what, cipher, where
    the key lives), unencrypted, or unknown. Unknown counts as unencrypted.

    \b
    Detected: dm-crypt/LUKS (also under LVM and md RAID), fscrypt v1/v2,
    gocryptfs/eCryptfs/CryFS and other crypto FUSE filesystems, ZFS native
    encryption, AWS EBS and instance store, GCE persistent disks, Azure managed
    disks, and in Kubernetes the PVC -> PV -> StorageClass chain.

    Exit code 0 only when every path is proven encrypted, else 6. The policy
    (preflight.policy) decides what `ebk backup` and `ebk restore` do with the
    same findings; this command always reports. With PostgreSQL down, its
    error is summarised in one line; --verbose (`ebk --verbose preflight`)
    shows the driver's full message.

    \b
    Examples:
      ebk preflight
      ebk preflight --json --restore-target /srv/pg/restored
    """
    runtime = Runtime.load(config_path)
    report = run_preflight(runtime.config, purpose="preflight", restore_target=restore_target)
    if json_output:
        data = report.to_dict()
        data["policy"] = runtime.config.preflight.policy
        emit_json(data)
    else:
        for line in render_table(report):
            click.echo(line)
    if not report.passed:
        sys.exit(PreflightFailed.exit_code)


COMMANDS = [preflight]
