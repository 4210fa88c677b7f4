"""`ebk verify`: prove backups by authenticating every chunk, or by a real restore."""

from __future__ import annotations

from pathlib import Path

import click

from ebk.app.verify import failure_error, verify_backups
from ebk.cli.output import emit_json, emit_table
from ebk.runtime import Runtime
from ebk.text import printable


@click.command()
@click.argument("ref", metavar="[ID|latest|unverified|all]", default="latest")
@click.option(
    "--level",
    type=click.Choice(["integrity", "restore"]),
    default="restore",
    show_default=True,
    help="integrity: fetch and authenticate every chunk; restore: also restore into a "
    "scratch PostgreSQL and run pg_verifybackup, pg_amcheck and the fingerprint comparison.",
)
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def verify(config_path: Path | None, ref: str, level: str, json_output: bool) -> None:
    """Verify backups and record the result, signed, in the repository.

    `integrity` reads every object of the backup, authenticates every chunk and
    compares sizes and SHA-256 with the signed manifest; it writes nothing but
    the verification record. `restore` restores into a scratch directory under
    verify.scratch_dir (it holds plaintext: the preflight applies to it), starts
    a throwaway PostgreSQL of the backup's major version on a private Unix
    socket, and checks pg_verifybackup (physical), pg_amcheck over every
    database, and the data fingerprints recorded at backup time. The scratch
    server is stopped and the directory removed on every exit path.

    `ebk list` shows the result in its VERIFIED column. Exit code 5 when a check
    failed (the message names the backup, the check and the database/table).

    \b
    Examples:
      ebk verify latest
      ebk verify unverified --level integrity
      ebk verify 20261128T142301123456Z-3fa9c1 --json
      ebk verify all --level integrity --json | jq '.[] | select(.passed | not)'
    """
    runtime = Runtime.load(config_path)
    results = verify_backups(runtime, ref, level=level)
    if json_output:
        emit_json(
            [
                {**r.record.to_public(), "stored_as": r.stored_as, "timings": r.timings}
                for r in results
            ]
        )
    elif not results:
        click.echo("nothing to verify")
    else:
        emit_table(
            ["ID", "KIND", "LEVEL", "RESULT", "DURATION", "CHECKS"],
            [
                [
                    r.manifest.backup_id,
                    r.manifest.kind,
                    r.record.level,
                    "passed" if r.record.passed else "FAILED",
                    f"{r.record.duration_seconds:.1f}s",
                    ", ".join(f"{c.name}:{c.outcome}" for c in r.record.checks),
                ]
                for r in results
            ],
        )
        for r in results:
            for c in r.record.checks:
                if c.outcome in ("fail", "warn", "incomplete"):
                    click.echo(
                        printable(f"  {r.manifest.backup_id} {c.name} {c.outcome}: {c.details}"),
                    )
    error = failure_error(results)
    if error is not None:
        raise error


COMMANDS = [verify]
