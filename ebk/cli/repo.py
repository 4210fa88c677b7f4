"""`ebk list`, `ebk show`, `ebk delete`: the repository's backups."""

from __future__ import annotations

from pathlib import Path

import click

from ebk.cli.output import emit_json, emit_table
from ebk.progress import human_bytes
from ebk.runtime import Runtime


@click.command(name="list")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(config_path: Path | None, json_output: bool) -> None:
    """List complete backups, oldest first.

    Only backups whose manifest was written are listed: an interrupted backup
    never is (see `ebk repo check`). Needs no key: listing reads manifests only.

    \b
    Examples:
      ebk list
      ebk list --json | jq -r '.[-1].backup_id'
    """
    runtime = Runtime.load(config_path)
    backups = runtime.repository.list_backups()
    if json_output:
        emit_json([m.to_public() for m in backups])
        return
    if not backups:
        click.echo(f"no complete backups in {runtime.storage.url}")
        return
    emit_table(
        ["ID", "KIND", "STARTED", "DURATION", "SIZE", "STORED", "PG", "DATABASES"],
        [
            [
                m.backup_id,
                m.kind,
                m.start_time,
                _duration(m.start_time, m.stop_time),
                human_bytes(m.size),
                human_bytes(m.stored_size),
                m.server_version,
                ",".join(m.databases) if m.databases else "-",
            ]
            for m in backups
        ],
    )


def _duration(start: str, stop: str) -> str:
    from datetime import datetime

    seconds = int((datetime.fromisoformat(stop) - datetime.fromisoformat(start)).total_seconds())
    return f"{seconds // 60}m{seconds % 60:02d}s"


@click.command()
@click.argument("backup_id", metavar="ID|latest")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def show(config_path: Path | None, backup_id: str, json_output: bool) -> None:
    """Show one backup: cluster, LSNs, objects with sizes and SHA-256, key slots.

    \b
    Examples:
      ebk show latest
      ebk show 20261128T142301Z-3fa9c1 --json
    """
    runtime = Runtime.load(config_path)
    manifest = runtime.repository.resolve(backup_id)
    doc = manifest.to_public()
    if json_output:
        emit_json(doc)
        return
    for key in (
        "backup_id",
        "kind",
        "system_identifier",
        "server_version",
        "start_time",
        "stop_time",
        "start_lsn",
        "stop_lsn",
        "timeline",
        "dek_id",
        "key_slots",
        "databases",
        "ebk_version",
        "format_version",
    ):
        value = doc.get(key)
        if value not in (None, []):
            click.echo(f"{key:18} {', '.join(value) if isinstance(value, list) else value}")
    click.echo(
        f"{'size':18} {human_bytes(manifest.size)} "
        f"(stored {human_bytes(manifest.stored_size)})"
    )
    click.echo("objects:")
    emit_table(
        ["NAME", "ROLE", "SIZE", "STORED", "SHA256"],
        [
            [
                o.name,
                o.role + (f" {o.database}" if o.database else ""),
                human_bytes(o.plain_size),
                human_bytes(o.stored_size),
                o.sha256[:16],
            ]
            for o in manifest.objects
        ],
    )


@click.command()
@click.argument("backup_id", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def delete(config_path: Path | None, backup_id: str, yes: bool) -> None:
    """Delete one backup (manifest first, so it is never half-listed).

    Asks for confirmation unless --yes; answering no exits 1 and deletes nothing.

    \b
    Examples:
      ebk delete 20261128T142301Z-3fa9c1
      ebk delete 20261128T142301Z-3fa9c1 --yes
    """
    runtime = Runtime.load(config_path)
    manifest = runtime.repository.resolve(backup_id)
    if not yes:
        click.confirm(
            f"delete backup {manifest.backup_id} ({manifest.kind}, {manifest.start_time})?",
            abort=True,
        )
    runtime.repository.delete_backup(manifest.backup_id)
    click.echo(f"deleted backup {manifest.backup_id}")


COMMANDS = [list_, show, delete]
