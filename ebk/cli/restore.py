"""`ebk restore`: the command an on-call engineer runs under pressure."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import click

from ebk.app.keylife import record_event
from ebk.app.restore import LogicalTarget, PhysicalTarget
from ebk.app.restore import restore as run_restore
from ebk.runtime import Runtime
from ebk.text import printable


def _parse_tablespace_map(values: tuple[str, ...]) -> dict[str, str]:
    mapping = {}
    for value in values:
        oid, sep, path = value.partition("=")
        if not sep or not oid.isdigit() or not path.startswith("/"):
            raise click.BadParameter(
                f"{value!r}: expected OID=/absolute/dir", param_hint="--tablespace-map"
            )
        mapping[oid] = path
    return mapping


def _owner(name: str | None) -> tuple[int, int] | None:
    if name is None:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise click.BadParameter(f"no such user {name!r}", param_hint="--owner") from None
    return entry.pw_uid, entry.pw_gid


@click.command()
@click.argument("backup_id", metavar="ID|latest")
@click.option(
    "--to",
    "target",
    type=click.Path(path_type=Path),
    help="Physical: restore into this new or empty directory.",
)
@click.option(
    "--tablespace-map",
    "tablespace_map",
    multiple=True,
    metavar="OID=DIR",
    help="Physical: restore tablespace OID into DIR instead of its original "
    "location (repeatable; `ebk show ID` lists the tablespaces).",
)
@click.option(
    "--owner",
    metavar="USER",
    help="Physical: chown the restored files to USER (when restoring as root).",
)
@click.option(
    "--no-verify", is_flag=True, help="Physical: skip pg_verifybackup over the restored directory."
)
@click.option(
    "--to-db",
    "target_db",
    metavar="NAME",
    help="Logical: restore into this database (pg_restore, one transaction).",
)
@click.option(
    "--database",
    metavar="NAME",
    help="Logical: which database of the backup to restore (when it holds several).",
)
@click.option("--create", is_flag=True, help="Logical: create the target database first.")
@click.option(
    "--with-globals",
    is_flag=True,
    help="Logical: restore roles and tablespaces (pg_dumpall -g) first.",
)
@click.option(
    "--recovery-key",
    "recovery_key",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Unwrap the data key with this offline recovery identity only "
    "(`ebk keys recovery-keygen`), without the KMS or key file.",
)
@click.option("--target-time", metavar="TS", help="PITR: replay WAL up to this time (with zone).")
@click.option("--target-lsn", metavar="LSN", help="PITR: replay WAL up to this LSN (0/3000060).")
@click.option("--target-xid", metavar="XID", help="PITR: replay up to this transaction's commit.")
@click.option("--target-name", metavar="NAME", help="PITR: replay up to this restore point.")
@click.option(
    "--target-action",
    type=click.Choice(["promote", "pause", "shutdown"]),
    default="promote",
    show_default=True,
    help="PITR: what PostgreSQL does at the target.",
)
@click.option(
    "--restore-command",
    metavar="CMD",
    help="PITR: restore_command for the restored cluster (default: this ebk's wal-fetch "
    "with this config).",
)
@click.option("--start", is_flag=True, help="PITR: start the cluster and wait until it replayed.")
@click.option("--port", type=int, help="PITR with --start: the port the restored cluster uses.")
@click.pass_obj
def restore(
    config_path: Path | None,
    backup_id: str,
    target: Path | None,
    tablespace_map: tuple[str, ...],
    owner: str | None,
    no_verify: bool,
    target_db: str | None,
    database: str | None,
    create: bool,
    with_globals: bool,
    recovery_key: Path | None,
    target_time: str | None,
    target_lsn: str | None,
    target_xid: str | None,
    target_name: str | None,
    target_action: str,
    restore_command: str | None,
    start: bool,
    port: int | None,
) -> None:
    """Restore a backup: physical into a directory, logical into a database.

    Every chunk is authenticated before it is used. A physical restore writes
    global/pg_control last and only after all data verified (and passed
    pg_verifybackup), so on any failure nothing that PostgreSQL would start
    from is left behind. A logical restore runs in one transaction.

    `latest` is the newest complete backup of the kind the target needs:
    physical for --to, logical for --to-db. An incremental backup is restored
    with every backup it builds on: all are authenticated first, decrypted into
    a staging directory beside --to (removed afterwards) and combined by
    pg_combinebackup of the backup's PostgreSQL major.

    \b
    Examples:
      ebk restore latest --to /var/lib/postgresql/15/restored --owner postgres
      ebk restore 20261128T142301Z-3fa9c1 --to-db app_copy --database app --create
      ebk restore latest --to /srv/pitr --owner postgres \\
          --target-time "2026-11-30 14:05:00+00" --target-action promote --start --port 5433

    Point-in-time recovery (--target-*): `latest` means the newest physical
    backup that ended before the target (for --target-xid/--target-name,
    which have no position, the newest; give an ID to choose). The restored
    directory gets restore_command (`ebk wal-fetch`, every WAL file
    authenticated), the target, recovery.signal and archive_mode = off.
    """
    from ebk.app.pitr import pitr_options

    pitr = {
        "target_time": target_time,
        "target_lsn": target_lsn,
        "target_xid": target_xid,
        "target_name": target_name,
        "target_action": target_action,
        "restore_command": restore_command,
        "start": start,
        "port": port,
    }
    target_spec = pitr_options(pitr)
    if (target is None) == (target_db is None):
        raise click.UsageError("give exactly one of --to DIR (physical) or --to-db NAME (logical)")
    if target_spec is not None and target is None:
        raise click.UsageError("--target-* (point-in-time recovery) needs --to DIR")
    runtime = Runtime.load(config_path)
    if target is not None:
        if target_spec is not None:
            from ebk.app.pitr import choose_backup

            if backup_id == "latest":
                backup_id = choose_backup(runtime.repository.list_backups(), target_spec).backup_id
        manifest = run_restore(
            runtime,
            backup_id,
            PhysicalTarget(
                target,
                _parse_tablespace_map(tablespace_map),
                owner=_owner(owner),
                verify=not no_verify,
            ),
            recovery_key=recovery_key,
        )
        click.echo(f"restored backup {printable(manifest.backup_id)} into {target}")
        if manifest.incremental:
            click.echo(
                f"  incremental: combined with the {manifest.chain_depth} backup(s) it builds "
                f"on, from full backup {printable(str(manifest.chain_root))}"
            )
        if target_spec is not None:
            from ebk.app.pitr import finish_pitr

            finish_pitr(runtime, config_path, target, target_spec, pitr, _owner(owner), owner)
            return
        click.echo(f"  start it with: pg_ctl -D {target} start")
        if os.geteuid() == 0 and owner is None:
            click.echo("  note: files are owned by root; PostgreSQL needs --owner postgres")
    else:
        assert target_db is not None
        manifest = run_restore(
            runtime,
            backup_id,
            LogicalTarget(target_db, database, create=create, with_globals=with_globals),
            recovery_key=recovery_key,
        )
        click.echo(
            f"restored backup {printable(manifest.backup_id)} into database {printable(target_db)}"
        )
    if recovery_key is not None:
        # Signed only where this host can also open the writer key (the KEK is up).
        record_event(
            runtime,
            "restore-with-recovery-key",
            {"backup_id": manifest.backup_id, "kind": manifest.kind},
        )


COMMANDS = [restore]
