"""`ebk backup`: one encrypted backup, a one-shot fit for cron and Kubernetes CronJobs."""

from __future__ import annotations

from pathlib import Path

import click

from ebk.backup import take_backup
from ebk.cli.output import emit_json
from ebk.daemon.locks import cluster_backup_lock
from ebk.keys.check import check_providers
from ebk.preflight.gate import enforce
from ebk.progress import human_bytes
from ebk.runtime import Runtime


@click.command()
@click.option(
    "--type",
    "kind",
    type=click.Choice(["physical", "logical"]),
    default="physical",
    show_default=True,
    help="physical: the whole cluster (base backup with its WAL, every tablespace), "
    "restored with `ebk restore --to DIR`. logical: pg_dump of databases, restored "
    "with `ebk restore --to-db NAME`.",
)
@click.option(
    "--database",
    "databases",
    multiple=True,
    metavar="NAME",
    help="Logical only: dump this database (repeatable). Default: backup.databases "
    "from the config, else every database plus globals (roles, tablespaces).",
)
@click.option("--json", "json_output", is_flag=True, help="Print the manifest as JSON.")
@click.pass_obj
def backup(
    config_path: Path | None, kind: str, databases: tuple[str, ...], json_output: bool
) -> None:
    """Take an encrypted backup now.

    The backup is listed only once every object is durably stored and its
    manifest is written; a failed or interrupted backup leaves nothing behind.
    Exit code 0 means the backup is complete.

    \b
    Examples:
      ebk backup --type physical
      ebk backup --type logical --database app --json
    """
    runtime = Runtime.load(config_path)
    if databases and kind != "logical":
        raise click.UsageError("--database applies to --type logical only")
    enforce(runtime.config, purpose="backup")
    check_providers(runtime.key_providers)
    with cluster_backup_lock(runtime.config.postgres):
        manifest = take_backup(
            runtime.config,
            runtime.repository,
            runtime.key_providers,
            kind=kind,
            databases=databases,
        )
    if json_output:
        emit_json(manifest.to_public())
    else:
        click.echo(
            f"backup {manifest.backup_id} complete: {kind}, "
            f"{human_bytes(manifest.size)} read, {human_bytes(manifest.stored_size)} stored"
        )


COMMANDS = [backup]
