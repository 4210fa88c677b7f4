"""`ebk keys`: prove the providers work, the offline recovery key, the KEK lifecycle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ebk.app.keylife import (
    key_status,
    lifecycle_of,
    retire_versions,
    rewrap_all_backups,
    rotate_kek,
)
from ebk.cli.output import emit_json, emit_table
from ebk.errors import EbkError, KeyProviderError
from ebk.keys.keyfile import KeyFileProvider
from ebk.keys.recovery import write_identity_file
from ebk.repository.writer import parse_public
from ebk.runtime import Runtime
from ebk.text import printable


@click.group()
def keys() -> None:
    """Key providers (keyfile, Vault/OpenBao Transit, AWS KMS), the recovery key, the KEK lifecycle.

    \b
    Examples:
      ebk keys check
      ebk keys recovery-keygen --out /media/offline/ebk-recovery.key
      ebk keys status
      ebk keys rotate
      ebk keys log
    """


@keys.command()
@click.option("--json", "json_output", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def check(config_path: Path | None, json_output: bool) -> None:
    """Prove the key provider round trip: wrap, unwrap, and refuse a foreign context.

    Recovery recipients are proven by wrapping (their private key is offline).
    Exit code 0 when every provider works, 3 when one does not; `ebk backup`
    runs the same check and refuses to start on failure.

    \b
    Examples:
      ebk keys check
      ebk keys check --json
    """
    runtime = Runtime.load(config_path, json_output=json_output)
    try:
        runtime.checked_key_providers()
    except EbkError as exc:
        if json_output:
            emit_json(
                {"ok": False, "error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}
            )
        raise
    results = runtime.key_check or []
    if json_output:
        emit_json({"ok": True, "providers": results})
        return
    rows = [(r["provider"], r.get("kek_id", ""), r["check"], f"{r['ms']} ms") for r in results]
    emit_table(["PROVIDER", "KEK", "CHECK", "TIME"], rows)


@keys.command("recovery-keygen")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Where to write the private identity (mode 0600; never overwritten).",
)
@click.option(
    "--writer-key",
    "writer_keys",
    multiple=True,
    metavar="KEY",
    help="Record this writer public key (ebkwriter1…) in the file. Default: the "
    "repository's, from repository.writer_keys or via the KEK.",
)
@click.pass_obj
def recovery_keygen(config_path: Path | None, out: Path, writer_keys: tuple[str, ...]) -> None:
    """Create an offline recovery key: a private identity file and its public recipient.

    Put the printed recipient in keys.recovery_recipients: every new backup
    then gets a slot that only the identity file opens, so `ebk restore
    --recovery-key FILE` works without the KMS. Move the file OFFLINE (a safe,
    a password manager), and test it with a restore now and then.

    \b
    Examples:
      ebk keys recovery-keygen --out /media/offline/ebk-recovery.key
      ebk restore latest --to /srv/pg/restored --recovery-key /media/offline/ebk-recovery.key
    """
    keys_to_pin = list(writer_keys)
    if not keys_to_pin:
        runtime = Runtime.load(config_path)
        try:
            keys_to_pin = runtime.trusted_writers().encoded()
        except EbkError as exc:
            click.echo(
                f"ebk: note: no writer key recorded in the identity ({printable(exc.message)}); "
                "a restore with it then needs repository.writer_keys in the config, or a "
                "`# writer-key: …` line added to the file (`ebk keys writer-key` prints it)",
                err=True,
            )
    for key in keys_to_pin:
        parse_public(key, where="--writer-key")
    recipient = write_identity_file(out, keys_to_pin)
    click.echo(f"wrote the recovery identity to {out} (mode 0600): keep it offline")
    if keys_to_pin:
        click.echo(f"  it trusts backups signed by writer key(s): {', '.join(keys_to_pin)}")
    click.echo("add its recipient to the config:")
    click.echo(f'  [keys]\n  recovery_recipients = ["{recipient}"]')


@keys.command("writer-key")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def writer_key(config_path: Path | None, json_output: bool) -> None:
    """Print the repository's writer public key(s), to pin where readers trust them.

    Every manifest is signed with the repository's writer key; readers list,
    count and restore only what it signed. Pin the public key as
    repository.writer_keys on every host that reads the repository (then
    `ebk list` and retention need no KMS call), and keep it with the offline
    recovery key. Needs the KEK unless the keys are already pinned.

    \b
    Examples:
      ebk keys writer-key
      ebk keys writer-key --json | jq -r '.[0]'
    """
    runtime = Runtime.load(config_path)
    keys = runtime.trusted_writers().encoded()
    if json_output:
        emit_json(keys)
        return
    for key in keys:
        click.echo(key)


def _days(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds / 86400:.1f}d"


@keys.command()
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.option(
    "--exposed",
    "exposed",
    metavar="VERSION",
    help="List the backups whose data key is or was wrapped under VERSION (after a "
    "suspected KEK compromise).",
)
@click.pass_obj
def status(config_path: Path | None, json_output: bool, exposed: str | None) -> None:
    """The KEK against the key policy: version, age, rotation due, backups per version.

    Reads the provider's key metadata (Transit: read on transit/keys/NAME; KMS:
    DescribeKey, ListKeyRotations) and every backup's key object. Exit code 0
    when the policy holds; 3 when rotation is overdue (keys.rotation_period)
    or a backup is wrapped only under a retired or missing KEK version.

    \b
    Examples:
      ebk keys status
      ebk keys status --json | jq '.versions[] | {version, backups}'
      ebk keys status --exposed transit/ebk:v3 --json
    """
    runtime = Runtime.load(config_path, json_output=json_output)
    st = key_status(runtime)
    if exposed is not None:
        rows = st.exposed(exposed)
        if json_output:
            emit_json([{"backup_id": b.backup_id, "versions": list(b.versions)} for b in rows])
        else:
            click.echo(f"{len(rows)} backup(s) whose data key is or was wrapped under {exposed}:")
            emit_table(
                ["BACKUP", "STARTED", "WRAPPED NOW UNDER"],
                [(b.backup_id, b.start_time, ", ".join(b.versions)) for b in rows],
            )
        return
    doc = st.to_json()
    if json_output:
        emit_json(doc)
    else:
        click.echo(f"provider   {st.info.provider} ({printable(st.info.key)})")
        click.echo(
            f"current    {doc['current_version']}, made {doc['current_created'] or 'unknown'}, "
            f"age {_days(doc['age_seconds'])}"
        )
        due = doc["rotation_due"] or "unknown (the provider does not report key age)"
        click.echo(
            f"rotation   every {_days(doc['rotation_period_seconds'])}; due {due}"
            + (" (OVERDUE: `ebk keys rotate`)" if st.overdue else "")
        )
        click.echo(
            f"backups    {doc['backups']}, {doc['pending_rewrap']} not yet under the current "
            f"version (`ebk keys rewrap`)"
        )
        if doc["wal_keys"]:
            click.echo(f"WAL keys   {doc['wal_keys']} (the WAL archive's data keys; rewrapped too)")
        for note in st.info.notes:
            click.echo(f"note       {printable(note)}")
        emit_table(
            ["VERSION", "CREATED", "STATE", "BACKUPS", "WAL KEYS", "RETIRABLE"],
            [
                (
                    v["version"],
                    v["created"] or "?",
                    ("current" if v["current"] else "usable" if v["usable"] else "retired")
                    + (" +writer key" if v["writer_key"] else ""),
                    v["backups"],
                    v["wal_keys"],
                    "retirable" if v["retirable"] else v["retirable_after"] or "-",
                )
                for v in doc["versions"]
            ]
            + [(k, "?", "MISSING", n, "-", "-") for k, n in doc["unknown_versions"].items()],
        )
        for wal_key in st.wal_stranded:
            click.echo(
                f"ebk: error: WAL key {wal_key} is wrapped only under retired or missing "
                "version(s): the WAL it encrypts cannot be replayed until that version is back",
                err=True,
            )
        for b in st.stranded:
            how = (
                f"it restores only with --recovery-key ({b.recovery_slots} recovery slot(s))"
                if b.recovery_slots
                else "it cannot be restored until that version is back"
            )
            click.echo(
                f"ebk: error: backup {b.backup_id} is wrapped only under retired or missing "
                f"version(s) {', '.join(b.versions) or '(none)'}: {how}",
                err=True,
            )
    if not st.ok:
        raise KeyProviderError(
            "the key policy does not hold: "
            + "; ".join(
                ([f"rotation overdue since {doc['rotation_due']}"] if st.overdue else [])
                + ([f"{len(st.stranded)} backup(s) stranded"] if st.stranded else [])
            ),
            hint="`ebk keys rotate` rotates and re-wraps; see docs/key-management.md",
        )


def _rewrap_and_print(runtime: Runtime, *, force: bool, workers: int | None) -> None:
    tty = sys.stderr.isatty()

    def progress(n: int) -> None:
        if tty and n % 50 == 0:
            click.echo(f"\rre-wrapped or checked {n} key objects", err=True, nl=False)

    report = rewrap_all_backups(runtime, force=force, workers=workers, progress=progress)
    if tty:
        click.echo("", err=True)
    moved = ", ".join(f"{n} from {v}" for v, n in sorted(report.moved_from.items())) or "none"
    click.echo(
        f"re-wrapped {report.rewrapped} backup(s) under {report.current} ({moved}); "
        f"{report.already_current} already current; {report.wal_keys_rewrapped} WAL key(s) "
        f"re-wrapped; {report.seconds:.1f}s"
    )
    for backup_id, why in sorted(report.failed.items()):
        click.echo(f"ebk: error: backup {printable(backup_id)}: {printable(why)}", err=True)
    if report.failed:
        raise KeyProviderError(
            f"{len(report.failed)} key object(s) could not be re-wrapped (modified, damaged "
            "or not this repository's); every other backup was",
            hint="they stay under their old version: keep it until they are restored from a "
            "good copy or deleted; `ebk keys status` lists them",
        )


@keys.command()
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Concurrent KMS requests (default keys.rewrap_workers).",
)
@click.option("--no-rewrap", is_flag=True, help="Only rotate; `ebk keys rewrap` later.")
@click.pass_obj
def rotate(config_path: Path | None, workers: int | None, no_rewrap: bool) -> None:
    """Rotate the KEK in its provider, then re-wrap every backup under the new version.

    Vault/OpenBao: Transit rotate (needs update on transit/keys/NAME/rotate).
    AWS KMS: RotateKeyOnDemand (new material behind the same ARN); to move to
    another key instead, set awskms.key_id to it, list the old one in
    awskms.previous_key_ids and run `ebk keys rewrap`. Key file: a new KEK is
    added beside the old ones (atomically, the file's mode, owner and symlink
    kept). Old versions keep unwrapping until `ebk keys retire`.

    \b
    Examples:
      ebk keys rotate
      ebk keys rotate --no-rewrap && ebk keys rewrap
    """
    runtime = Runtime.load(config_path)
    new, previous = rotate_kek(runtime)
    click.echo(f"rotated the KEK: {previous or '?'} -> {new}")
    if not no_rewrap:
        force = lifecycle_of(runtime.key_providers[0]).rewrap_needs_force
        _rewrap_and_print(runtime, force=force, workers=workers)


@keys.command()
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Concurrent KMS requests (default keys.rewrap_workers).",
)
@click.option(
    "--all",
    "force",
    is_flag=True,
    help="Re-wrap every slot, also those already naming the current version (AWS KMS after "
    "a rotation inside the same key).",
)
@click.pass_obj
def rewrap(config_path: Path | None, workers: int | None, force: bool) -> None:
    """Re-wrap every backup's data key (and the writer key) under the newest KEK version.

    Transit rewrap / KMS ReEncrypt: the data key never leaves the KMS (the key
    file re-wraps locally). Only the small key objects are rewritten, each by
    one atomic replace; data is never touched; recovery slots stay. Takes the
    repository lease (exit 8 while a delete or retention runs). Idempotent and
    resumable: after a crash, run it again.

    \b
    Examples:
      ebk keys rewrap
      ebk keys rewrap --workers 16
    """
    runtime = Runtime.load(config_path)
    _rewrap_and_print(runtime, force=force, workers=workers)


@keys.command()
@click.argument("versions", nargs=-1, metavar="[VERSION]...")
@click.option("--dry-run", is_flag=True, help="Only say what would be retired.")
@click.option(
    "--force",
    is_flag=True,
    help="Key file: really remove old KEKs from the file (after you backed up the new file).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (key file --force).")
@click.pass_obj
def retire(
    config_path: Path | None, versions: tuple[str, ...], dry_run: bool, force: bool, yes: bool
) -> None:
    """Retire old KEK versions nothing depends on any more (default: every retirable one).

    A version is retirable when no backup and not the writer key is wrapped
    under it, and keys.retire_after has passed since the last complete rewrap.
    Vault/OpenBao: raises min_decryption_version. AWS KMS: reports the key
    deletion to schedule; ebk never deletes a KMS key. Key file: removes old
    KEKs only with --force, after confirming that the new file is backed up.

    \b
    Examples:
      ebk keys retire --dry-run
      ebk keys retire
      ebk keys retire --force          # key file
    """
    runtime = Runtime.load(config_path)
    provider = runtime.key_providers[0]
    keyfile = isinstance(provider, KeyFileProvider)
    wanted = list(versions) or None
    messages = retire_versions(runtime, wanted, apply=False)  # refuses what is still needed
    if not messages:
        click.echo("nothing to retire (`ebk keys status` shows why)")
        return
    if not dry_run and keyfile and not force:
        click.echo("key file: removing KEKs needs --force; it would:", err=True)
    elif not dry_run:
        if isinstance(provider, KeyFileProvider) and not yes:
            click.confirm(
                f"remove old KEKs from {provider.path}? Only answer yes once a backup of the "
                f"file as it is now (primary {provider.primary_kek_id}) is stored safely",
                abort=True,
            )
        messages = retire_versions(runtime, wanted, apply=True)
    for message in messages:
        click.echo(printable(message))


@keys.command("log")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def log_(config_path: Path | None, json_output: bool) -> None:
    """The signed key-event log: rotate, rewrap, retire, shred, restore-with-recovery-key.

    Only events signed by this repository's writer key are listed; anything
    else under keyevents/ is reported on stderr as unauthenticated.

    \b
    Examples:
      ebk keys log
      ebk keys log --json | jq '.[] | select(.kind == "rotate")'
    """
    runtime = Runtime.load(config_path)
    listing = runtime.repository.key_events().read(runtime.trusted_writers())
    for name, why in listing.unauthenticated:
        click.echo(
            f"ebk: warning: unauthenticated key event {printable(name)}: {printable(why)}",
            err=True,
        )
    if json_output:
        emit_json([e.document() for e in listing.events])
        return
    emit_table(
        ["TIME", "EVENT", "BY", "DETAILS"],
        [
            (e.time, e.kind, f"{e.user}@{e.host}", json.dumps(e.details, sort_keys=True)[:200])
            for e in listing.events
        ],
    )


COMMANDS: list[click.Command] = [keys]
