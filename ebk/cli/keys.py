"""`ebk keys`: prove the key providers work, make the offline recovery key, rewrap on rotation."""

from __future__ import annotations

from pathlib import Path

import click

from ebk.app.maintenance import rewrap_all
from ebk.cli.output import emit_json, emit_table
from ebk.errors import EbkError
from ebk.keys.keyfile import KeyFileProvider
from ebk.keys.recovery import write_identity_file
from ebk.repository.writer import parse_public
from ebk.runtime import Runtime
from ebk.text import printable


@click.group()
def keys() -> None:
    """Key providers (keyfile, Vault/OpenBao Transit, AWS KMS) and the offline recovery key.

    \b
    Examples:
      ebk keys check
      ebk keys recovery-keygen --out /media/offline/ebk-recovery.key
      ebk keys rotate-rewrap --rotate-keyfile
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


@keys.command("rotate-rewrap")
@click.option("--dry-run", is_flag=True, help="Only list the key objects that would change.")
@click.option(
    "--rotate-keyfile",
    is_flag=True,
    help="keys.provider = keyfile: first add a new KEK to the key file and make it "
    "primary (old KEKs stay in the file).",
)
@click.pass_obj
def rotate_rewrap(config_path: Path | None, dry_run: bool, rotate_keyfile: bool) -> None:
    """Rewrap every backup's data key under the provider's current KEK.

    Run after rotating the KEK (`vault write -f transit/keys/NAME/rotate`;
    a new KMS key in awskms.key_id; or --rotate-keyfile). Only the small key
    objects are rewritten; data is never touched. With Vault and AWS KMS the
    data key never leaves the KMS. Recovery slots stay as they are.

    \b
    Examples:
      ebk keys rotate-rewrap --dry-run
      ebk keys rotate-rewrap --rotate-keyfile
    """
    runtime = Runtime.load(config_path)
    primary = runtime.key_providers[0]
    if rotate_keyfile:
        if not isinstance(primary, KeyFileProvider):
            raise click.UsageError("--rotate-keyfile applies to keys.provider = keyfile only")
        if not dry_run:
            click.echo(f"new primary KEK {primary.rotate()} in {primary.path}")
    rows = rewrap_all(runtime.repository, primary, dry_run=dry_run)
    emit_table(
        ["BACKUP", "SLOTS BEFORE", "SLOTS AFTER"],
        [
            (r.backup_id, ", ".join(r.before), "(dry run)" if dry_run else ", ".join(r.after))
            for r in rows
        ],
    )


COMMANDS: list[click.Command] = [keys]
