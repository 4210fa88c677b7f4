"""`ebk retention`: apply the retention policy now (the daemon's retention job does the same)."""

from __future__ import annotations

from pathlib import Path

import click

from ebk.app.keylife import record_event
from ebk.app.retention import RetentionPolicy, apply_retention
from ebk.cli.output import emit_json, emit_table
from ebk.progress import human_bytes
from ebk.runtime import Runtime


@click.command()
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted, and why.")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def retention(config_path: Path | None, dry_run: bool, json_output: bool) -> None:
    """Delete the complete backups that [retention] does not keep.

    Per kind (and cluster): the newest backup is always kept; keep_last N,
    keep_daily/keep_weekly/keep_monthly N (the newest of each of the N most
    recent UTC days/ISO weeks/months that have a backup) and min_age each keep
    backups. Every kept backup is shown with each rule that keeps it.
    Deletion takes the repository lease (locks/delete.json), so two deleters
    never run at once; exit 8 if another holds it.

    \b
    Examples:
      ebk retention --dry-run          # what would go, and the rule that keeps the rest
      ebk retention --json | jq '.deleted'
    """
    runtime = Runtime.load(config_path)
    policy = RetentionPolicy.from_config(runtime.config.retention)
    result = apply_retention(runtime.repository, policy, dry_run=dry_run, purpose="ebk retention")
    if result.deleted:
        record_event(runtime, "shred", {"backup_ids": result.deleted[:200], "by": "retention"})
    from ebk.app.walretention import prune_wal  # the WAL archive (issue 13)

    wal_deleted = prune_wal(runtime, dry_run=dry_run)
    doomed = [d for d in result.decisions if not d.keep]
    freed = sum(d.size for d in doomed)
    if json_output:
        emit_json(
            {
                "policy": policy.describe(),
                "dry_run": dry_run,
                "decisions": [d.to_json() for d in result.decisions],
                "deleted": result.deleted,
                "freed_bytes": result.freed_bytes,
                "wal_deleted": wal_deleted,
            }
        )
        return
    click.echo(f"policy: {policy.describe()}")
    if not result.decisions:
        click.echo(f"no complete backups in {runtime.repository.url}")
        return
    emit_table(
        ["ID", "KIND", "STARTED", "ACTION", "WHY"],
        [
            [
                d.backup_id,
                d.kind,
                d.time.isoformat(timespec="seconds") if d.time else "?",
                "keep"
                if d.keep
                else "would delete"
                if dry_run
                else "deleted"
                if d.backup_id in result.deleted
                else "already gone",
                d.why,
            ]
            for d in result.decisions
        ],
    )
    if dry_run:
        click.echo(
            f"would delete {len(doomed)} of {len(result.decisions)} backups "
            f"({human_bytes(freed)} stored)"
        )
    else:
        click.echo(
            f"deleted {len(result.deleted)} of {len(result.decisions)} backups "
            f"({human_bytes(result.freed_bytes)} freed)"
        )
    if wal_deleted:
        verb = "would delete" if dry_run else "deleted"
        click.echo(
            f"{verb} {len(wal_deleted)} archived WAL files older than the oldest kept "
            f"physical backup ({wal_deleted[0]} ... {wal_deleted[-1]})"
        )


COMMANDS: list[click.Command] = [retention]
