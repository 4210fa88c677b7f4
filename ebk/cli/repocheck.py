"""`ebk repo check`: find (and with --clean remove) what interrupted runs left behind.

Two kinds of leftovers: incomplete backups (objects without a manifest, never
listed nor restorable) and unfinished uploads in the object store (S3
multipart uploads, Azure uncommitted blocks, local partial files), which cost
money and are invisible to `ebk list`.  Anything younger than the grace
period may belong to a backup running right now, so --clean never touches it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from ebk.cli.output import emit_json, emit_table
from ebk.errors import ConfigError
from ebk.progress import human_bytes
from ebk.repository import BACKUPS
from ebk.runtime import Runtime

DURATION = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
ID_TIME = re.compile(r"^(\d{8}T\d{6}Z)")


def parse_duration(text: str) -> timedelta:
    match = DURATION.match(text.strip())
    if not match:
        raise ConfigError(
            f"--older-than {text!r} is not a duration",
            hint="write a number and a unit: 90s, 30m, 24h, 7d",
        )
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


def backup_time(backup_id: str) -> datetime | None:
    """Backup ids start with their UTC start time (20261128T142301Z-3fa9c1)."""
    match = ID_TIME.match(backup_id)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def upload_time(name: str, started: datetime | None) -> datetime | None:
    """The later of the store's start time and the backup id's: some stores misreport."""
    times = [t for t in (started,) if t is not None]
    if name.startswith(BACKUPS):
        from_id = backup_time(name[len(BACKUPS) :].split("/", 1)[0])
        if from_id is not None:
            times.append(from_id)
    return max(times) if times else None


def _age(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "unknown"
    seconds = max(0, int((now - when).total_seconds()))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 60}m{seconds % 60}s"


@click.group()
def repo() -> None:
    """Repository maintenance.

    \b
    Examples:
      ebk repo check
      ebk repo check --clean --older-than 7d
    """


@repo.command()
@click.option(
    "--clean",
    is_flag=True,
    help="Remove the incomplete backups and unfinished uploads older than the grace period.",
)
@click.option(
    "--older-than",
    "older_than",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="Grace period (90s, 30m, 24h, 7d): younger leftovers may belong to a backup "
    "that is running now and are never removed.",
)
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def check(config_path: Path | None, clean: bool, older_than: str, json_output: bool) -> None:
    """Report incomplete backups and orphaned uploads; --clean removes the old ones.

    An incomplete backup has objects but no manifest: it was interrupted (or
    is still being written). An orphaned upload is an unfinished multipart
    upload, uncommitted blocks or a partial file. Neither is ever listed or
    restored, but both take space. Exit code 0 whether or not anything was found.

    \b
    Examples:
      ebk repo check
      ebk repo check --clean --older-than 24h --json
    """
    grace = parse_duration(older_than)
    runtime = Runtime.load(config_path)
    now = datetime.now(UTC)
    cutoff = now - grace
    repository, storage = runtime.repository, runtime.storage

    backups: list[dict[str, Any]] = []
    for inc in repository.list_incomplete():
        started = backup_time(inc.backup_id)
        old = started is not None and started <= cutoff
        backups.append(
            {
                "backup_id": inc.backup_id,
                "objects": inc.objects,
                "size": inc.size,
                "started": started.isoformat() if started else None,
                "age": _age(started, now),
                "old_enough": old,
                "removed": False,
            }
        )
    uploads: list[dict[str, Any]] = []
    found_uploads = storage.list_incomplete()
    for upload in found_uploads:
        started = upload_time(upload.name, upload.started)
        uploads.append(
            {
                "name": upload.name,
                "started": started.isoformat() if started else None,
                "age": _age(started, now),
                "old_enough": started is not None and started <= cutoff,
                "removed": False,
            }
        )

    if clean:
        for entry, upload in zip(uploads, found_uploads, strict=True):
            if entry["old_enough"]:
                storage.remove_incomplete(upload)
                entry["removed"] = True
        for entry in backups:
            if entry["old_enough"]:
                repository.delete_backup(str(entry["backup_id"]))
                entry["removed"] = True

    if json_output:
        emit_json(
            {
                "repository": storage.url,
                "grace_seconds": int(grace.total_seconds()),
                "incomplete_backups": backups,
                "orphaned_uploads": uploads,
            }
        )
        return
    click.echo(f"repository {storage.url}")
    if not backups and not uploads:
        click.echo("no incomplete backups, no orphaned uploads")
        return

    def state(entry: dict[str, Any]) -> str:
        if entry["removed"]:
            return "removed"
        if not entry["old_enough"]:
            return f"kept (younger than {older_than}: may be running)"
        return "removable (--clean)"

    if backups:
        click.echo(f"incomplete backups (no manifest): {len(backups)}")
        emit_table(
            ["ID", "AGE", "OBJECTS", "SIZE", "STATE"],
            [
                [
                    b["backup_id"],
                    b["age"],
                    len(b["objects"]),
                    human_bytes(int(b["size"])),
                    state(b),
                ]
                for b in backups
            ],
        )
    if uploads:
        click.echo(f"orphaned uploads: {len(uploads)}")
        emit_table(["OBJECT", "AGE", "STATE"], [[u["name"], u["age"], state(u)] for u in uploads])


COMMANDS: list[click.Command] = [repo]
