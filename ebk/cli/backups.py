"""`ebk list`, `ebk show`, `ebk delete`: the repository's backups."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ebk.app.keylife import record_event
from ebk.app.maintenance import delete_backup
from ebk.app.verify import Status, age_text, newest_verified, statuses
from ebk.cli.output import emit_json, emit_table
from ebk.progress import human_bytes
from ebk.repository import Catalog
from ebk.runtime import Runtime
from ebk.text import printable


@click.command(name="list")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(config_path: Path | None, json_output: bool) -> None:
    """List complete backups, oldest first.

    KIND is physical, incremental (a physical backup holding only what changed
    since PARENT; restoring it needs its whole chain) or logical.

    Only backups whose manifest was written, parses and carries this
    repository's writer signature are listed: an interrupted backup never is
    (see `ebk repo check`), and anything else found under manifests/ is
    reported on stderr with the reason, never listed.

    \b
    Examples:
      ebk list
      ebk list --json | jq -r '.[-1].backup_id'
    """
    runtime = Runtime.load(config_path)
    catalog = runtime.repository.list_backups()
    backups = catalog.backups
    report_skipped(catalog)
    problems: list[str] = []
    status = statuses(runtime.repository, backups, problems)
    for problem in problems:
        click.echo(f"ebk: warning: ignored {printable(problem)}", err=True)
    if json_output:
        emit_json([_with_status(m.to_public(), status[m.backup_id]) for m in backups])
        return
    if not backups:
        click.echo(f"no complete backups in {runtime.repository.url}")
        return
    emit_table(
        [
            "ID",
            "KIND",
            "STARTED",
            "DURATION",
            "SIZE",
            "STORED",
            "PG",
            "VERIFIED",
            "DATABASES",
            "PARENT",
        ],
        [
            [
                m.backup_id,
                "incremental" if m.incremental else m.kind,
                _started(m.start_time),
                _duration(m.start_time, m.stop_time),
                human_bytes(m.size),
                human_bytes(m.stored_size),
                m.server_version,
                status[m.backup_id].label(),
                ",".join(m.databases) if m.databases else "-",
                m.parent or "-",
            ]
            for m in backups
        ],
    )
    verified = newest_verified(backups, status)
    click.echo(
        "newest verified backup: "
        + (
            f"{verified.backup_id}, taken {age_text(verified.start_time)} ago"
            if verified is not None
            else "none (run `ebk verify`)"
        )
    )


def _with_status(doc: dict[str, Any], status: Status) -> dict[str, Any]:
    """--json: the newest passing record (or null) and the newest record's outcome."""
    doc["verified"] = status.passed.to_public() if status.passed else None
    doc["last_verification"] = (
        {
            "passed": status.newest.passed,
            "level": status.newest.level,
            "verified_at": status.newest.verified_at,
        }
        if status.newest
        else None
    )
    return doc


def _duration(start: str, stop: str) -> str:
    try:
        delta = datetime.fromisoformat(stop) - datetime.fromisoformat(start)
    except (TypeError, ValueError):
        return "?"
    seconds = int(delta.total_seconds())
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _started(start: str) -> str:
    """Start times to the second, as operators read them (ids carry the microseconds)."""
    try:
        return datetime.fromisoformat(start).isoformat(timespec="seconds")
    except (TypeError, ValueError):
        return start


def report_skipped(catalog: Catalog) -> None:
    """What listing skipped goes to stderr: never shown as a backup, never silently lost."""
    for problem in catalog.problems:
        click.echo(
            f"ebk: warning: skipped {printable(problem.name)}: {printable(problem.reason)}",
            err=True,
        )
    if catalog.missing_newest:
        click.echo(
            f"ebk: warning: backup {printable(catalog.missing_newest)}, the newest this host "
            "has seen, is gone from the repository and nothing newer replaced it; `latest` "
            "is refused until `ebk repo check --accept-missing-newest`",
            err=True,
        )
    if catalog.shredded:
        click.echo(
            f"ebk: note: {len(catalog.shredded)} deleted backup(s) are shredded (key object "
            f"destroyed, deletion interrupted): {', '.join(catalog.shredded[:5])}; "
            "`ebk repo check --clean` removes the rest",
            err=True,
        )
    if catalog.legacy:
        click.echo(
            f"ebk: note: {len(catalog.legacy)} backup(s) written by ebk 0.1 carry no writer "
            "signature and are not listed; `ebk repo migrate` re-signs them (nothing is "
            "re-encrypted); until then they restore when named by id",
            err=True,
        )


@click.command()
@click.argument("backup_id", metavar="ID|latest")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def show(config_path: Path | None, backup_id: str, json_output: bool) -> None:
    """Show one backup: cluster, LSNs, objects with sizes and SHA-256, key slots.

    \b
    Examples:
      ebk show latest
      ebk show 20261128T142301123456Z-3fa9c1 --json
    """
    runtime = Runtime.load(config_path)
    manifest = runtime.repository.resolve(backup_id)
    problems: list[str] = []
    status = statuses(runtime.repository, [manifest], problems)[manifest.backup_id]
    for problem in problems:
        click.echo(f"ebk: warning: ignored {printable(problem)}", err=True)
    doc = _with_status(manifest.to_public(), status)
    shredded = not runtime.repository.key_object_exists(manifest.backup_id)
    doc["state"] = "shredded" if shredded else "complete"
    if json_output:
        emit_json(doc)
        return
    for key in (
        "backup_id",
        "kind",
        "backup_type",
        "parent",
        "chain_root",
        "chain_depth",
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
        "state",
    ):
        value = doc.get(key)
        if value not in (None, []):
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            click.echo(f"{key:18} {printable(shown)}")
    click.echo(
        f"{'size':18} {human_bytes(manifest.size)} (stored {human_bytes(manifest.stored_size)})"
    )
    click.echo(f"{'verified':18} {printable(status.label())}")
    if status.newest is not None:
        for check in status.newest.checks:
            click.echo(f"{'  ' + check.name:18} {check.outcome}: {printable(check.details[:300])}")
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
    """Delete one backup, crypto-shredded: its key object first, then data, manifest last.

    Once the key object (every slot, recovery slots included) is gone, no copy
    of the data - bucket versions, replicas - can be decrypted. An interrupted
    delete leaves a *shredded* backup: not listed, finished by running the
    delete again or `ebk repo check --clean`. Takes the repository lease
    (exit 8 while retention, repo check --clean or a rewrap runs). A backup
    that incremental backups build on is not deleted while they exist (exit 2):
    delete them first, newest first. The id must be given in full: `latest` is
    refused. Asks for confirmation unless --yes; answering no exits 1 and
    deletes nothing.

    \b
    Examples:
      ebk delete 20261128T142301123456Z-3fa9c1
      ebk delete 20261128T142301123456Z-3fa9c1 --yes    # from a script
    """
    runtime = Runtime.load(config_path)
    repo = runtime.repository
    manifest = repo.read_manifest(backup_id)
    if not yes:
        click.confirm(
            printable(
                f"delete backup {manifest.backup_id} ({manifest.kind}, {manifest.start_time})?"
            ),
            abort=True,
        )
    delete_backup(repo, manifest.backup_id)
    record_event(runtime, "shred", {"backup_ids": [manifest.backup_id], "by": "ebk delete"})
    click.echo(f"deleted backup {printable(manifest.backup_id)} (key object destroyed first)")


COMMANDS = [list_, show, delete]
