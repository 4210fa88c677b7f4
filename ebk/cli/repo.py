"""`ebk repo`: leftovers of interrupted runs (check, --clean) and layout migration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from ebk.app.keylife import record_event
from ebk.app.maintenance import Leftover, check_leftovers, clean_leftovers, migrate_repository
from ebk.cli.output import emit_json, emit_table
from ebk.config import parse_duration
from ebk.progress import human_bytes
from ebk.runtime import Runtime


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
    """Repository maintenance: leftovers of interrupted runs, migration from ebk 0.1.

    \b
    Examples:
      ebk repo check
      ebk repo check --clean --older-than 7d
      ebk repo migrate
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
    help="Grace period (90s, 30m, 24h, 7d): leftovers active more recently may belong to "
    "a backup that is running now and are never removed.",
)
@click.option(
    "--accept-missing-newest",
    is_flag=True,
    help="The newest backup this host had seen was deleted on purpose (e.g. `ebk delete` on "
    "another host): stop refusing `latest` for it.",
)
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def check(
    config_path: Path | None,
    clean: bool,
    older_than: str,
    accept_missing_newest: bool,
    json_output: bool,
) -> None:
    """Report incomplete backups and orphaned uploads; --clean removes the old ones.

    An incomplete backup has objects but no manifest: it was interrupted (or
    is still being written). An orphaned upload is an unfinished multipart
    upload, uncommitted blocks or a partial file. Neither is ever listed or
    restored, but both take space. Age counts from the newest object the store
    reports, so a long-running backup is not mistaken for a dead one; --clean
    takes the repository lease, and a backup whose leftovers were removed
    while it ran fails loudly instead of being listed. Exit code 0 whether or
    not anything was found.

    \b
    Examples:
      ebk repo check
      ebk repo check --clean --older-than 48h
      ebk repo check --json | jq '.incomplete_backups | length'
    """
    grace = timedelta(seconds=parse_duration(older_than, "--older-than"))
    runtime = Runtime.load(config_path)
    repository = runtime.repository
    if accept_missing_newest:
        repository.accept_missing_newest()
    report = check_leftovers(repository, grace=grace, now=datetime.now(UTC))
    if clean:
        clean_leftovers(repository, report)
        finished = [s.name for s in report.shredded if s.removed]
        if finished:
            record_event(runtime, "shred", {"backup_ids": finished[:200], "by": "repo check"})
    now = report.now

    def doc(entry: Leftover) -> dict[str, object]:
        out: dict[str, object] = {
            "started": entry.last_activity.isoformat() if entry.last_activity else None,
            "age": _age(entry.last_activity, now),
            "old_enough": entry.old_enough,
            "removed": entry.removed,
        }
        if entry.kind == "incomplete_backup":
            out.update(backup_id=entry.name, objects=entry.objects, size=entry.size)
        else:
            out["name"] = entry.name
        if entry.note:
            out["note"] = entry.note
        return out

    if json_output:
        emit_json(
            {
                "repository": repository.url,
                "grace_seconds": int(grace.total_seconds()),
                "incomplete_backups": [doc(b) for b in report.backups],
                "orphaned_uploads": [doc(u) for u in report.uploads],
                "shredded_backups": [
                    {"backup_id": s.name, "removed": s.removed} for s in report.shredded
                ],
            }
        )
        return
    click.echo(f"repository {repository.url}")
    if report.shredded:
        click.echo(
            f"shredded backups (key object destroyed, deletion interrupted): "
            f"{len(report.shredded)}; they can never be decrypted"
        )
        emit_table(
            ["ID", "STATE"],
            [
                [s.name, "removed" if s.removed else "rest removable (--clean)"]
                for s in report.shredded
            ],
        )
    if not report.backups and not report.uploads:
        click.echo("no incomplete backups, no orphaned uploads")
        return

    def state(entry: Leftover) -> str:
        if entry.removed:
            return "removed"
        if entry.note:
            return entry.note
        if not entry.old_enough:
            return f"kept (active within {older_than}: may be running)"
        return "removable (--clean)"

    if report.backups:
        click.echo(f"incomplete backups (no manifest): {len(report.backups)}")
        emit_table(
            ["ID", "AGE", "OBJECTS", "SIZE", "STATE"],
            [
                [b.name, _age(b.last_activity, now), len(b.objects), human_bytes(b.size), state(b)]
                for b in report.backups
            ],
        )
    if report.uploads:
        click.echo(f"orphaned uploads: {len(report.uploads)}")
        emit_table(
            ["OBJECT", "AGE", "STATE"],
            [[u.name, _age(u.last_activity, now), state(u)] for u in report.uploads],
        )


@repo.command()
@click.pass_obj
def migrate(config_path: Path | None) -> None:
    """Bring a repository written by ebk 0.1 up to date.

    Gives the repository an id and a writer key (wrapped by the KEK), and
    re-signs every backup ebk 0.1 wrote: each manifest is authenticated with
    its data key (unwrapped by the configured KEK) before it is upgraded,
    MAC'd and signed, then moved from backups/<id>/manifest.json to
    manifests/<id>.json. Nothing is decrypted or re-encrypted. Until then,
    0.1 backups restore only when named by id. Safe to interrupt and run
    again; takes the repository lease.

    \b
    Examples:
      ebk repo migrate
      ebk keys writer-key      # then pin it as repository.writer_keys
    """
    runtime = Runtime.load(config_path)
    result = migrate_repository(runtime)
    click.echo(
        f"repository {runtime.repository.url} ({result.repository_id}): writer key "
        f"{result.writer_key_id}; re-signed {len(result.resigned)} backup(s)"
    )


COMMANDS: list[click.Command] = [repo]
