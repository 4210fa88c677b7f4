"""`ebk backup`: one encrypted backup, a one-shot fit for cron and Kubernetes CronJobs."""

from __future__ import annotations

from pathlib import Path

import click

from ebk.app.backup import run_backup
from ebk.cli.output import emit_json
from ebk.progress import human_bytes
from ebk.runtime import Runtime


@click.command()
@click.option(
    "--type",
    "kind",
    type=click.Choice(["physical", "incremental", "logical"]),
    default="physical",
    show_default=True,
    help="physical: the whole cluster (base backup with its WAL, every tablespace), "
    "restored with `ebk restore --to DIR`. incremental (PostgreSQL 17+, summarize_wal = "
    "on): a physical backup of only the blocks changed since the newest physical backup "
    "(its parent; a full backup when there is none to build on), restored like a physical "
    "one. logical: pg_dump of databases, restored "
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
      ebk backup                                  # physical: the whole cluster
      ebk backup --type incremental               # changes since the last physical (17+)
      ebk backup --type logical --database app    # pg_dump of one database
      ebk backup --json | jq -r .backup_id
    """
    runtime = Runtime.load(config_path)
    if databases and kind != "logical":
        raise click.UsageError("--database applies to --type logical only")
    manifest = run_backup(runtime, kind=kind, databases=databases)
    if json_output:
        emit_json(manifest.to_public())
    else:
        shown = manifest.kind
        if manifest.parent is not None:
            shown = f"incremental on {manifest.parent} (chain depth {manifest.chain_depth})"
        elif kind == "incremental":
            shown = "physical (full: nothing to build on, see the warning above)"
        click.echo(
            f"backup {manifest.backup_id} complete: {shown}, "
            f"{human_bytes(manifest.size)} read, {human_bytes(manifest.stored_size)} stored"
        )


COMMANDS = [backup]
