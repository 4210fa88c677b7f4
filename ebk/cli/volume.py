"""`ebk volume`: encrypted database volumes whose keys the KMS holds (LUKS2, fscrypt v2)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ebk.cli.output import emit_json, emit_table
from ebk.keys.base import KeyProvider
from ebk.keys.factory import build_primary
from ebk.runtime import Runtime
from ebk.volume import manage
from ebk.volume.errors import VolumeUsageError
from ebk.volume.keyobject import KeyStore


def _setup(config_path: Path | None) -> tuple[KeyStore, manage.ProviderFactory]:
    runtime = Runtime.load(config_path)
    cfg = runtime.config

    def provider() -> KeyProvider:
        return build_primary(cfg.keys, vault=cfg.vault, awskms=cfg.awskms)

    return KeyStore(cfg.volume), provider


@contextmanager
def _os_errors(target: Path | None) -> Iterator[None]:
    """A system call the kernel refused is an operator's problem, not a traceback."""
    try:
        yield
    except OSError as exc:
        where = f"{target}: " if target else ""
        raise VolumeUsageError(
            f"{where}{exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(target) else ""),
            hint="`ebk volume` needs root (fscrypt keyring ioctls, device-mapper, block devices)"
            if exc.errno in (errno.EPERM, errno.EACCES)
            else "check the path and that its filesystem is mounted; nothing was changed",
        ) from None


def _say(result: dict[str, str]) -> None:
    line = (
        f"{result['state']}: {result['type']} volume {result.get('name') or ''} {result['target']}"
    )
    if result.get("device"):
        line += f" -> {result['device']}"
    click.echo(" ".join(line.split()))


TARGET = click.argument("target", metavar="PATH_OR_DEVICE", type=click.Path(path_type=Path))


@click.group()
def volume() -> None:
    """Encrypted database volumes: LUKS2 devices and fscrypt v2 directories.

    Each volume gets a random 512-bit key, stored only wrapped by the KEK of
    [keys] (key file, Vault/OpenBao Transit, AWS KMS) in a key object bound to
    the volume ([volume] key_dir, default /var/lib/ebk/volumes).  The plaintext
    key exists only in locked memory and in the kernel.  systemd's
    ebk-volume@.service unlocks a volume before PostgreSQL or Docker start.

    \b
    Examples:
      ebk volume init --type fscrypt /srv/pg
      ebk volume init --type luks /dev/vdb --name pgdata
      ebk volume unlock /srv/pg
      ebk volume status --json
    """


@volume.command("init")
@click.option(
    "--type",
    "vtype",
    type=click.Choice(["fscrypt", "luks"]),
    help="fscrypt: encrypt an empty directory (ext4 -O encrypt, f2fs); luks: format a device. "
    "Default: fscrypt for a directory (or a path yet to be created), luks for a block device.",
)
@click.option("--name", help="A label for the volume (default: the directory or device name).")
@TARGET
@click.pass_obj
def init_cmd(config_path: Path | None, vtype: str | None, name: str | None, target: Path) -> None:
    """Create a volume with a new random key, wrapped by the KEK; leave it unlocked.

    fscrypt: PATH must be an empty (or new) directory on a filesystem with
    encryption enabled; it gets a v2 policy (AES-256-XTS, AES-256-CTS names).
    luks: DEVICE must be an empty block device; it is formatted as LUKS2
    (aes-xts-plain64) and opened as /dev/mapper/ebk-NAME; make a filesystem
    on that.  The key object is written (mode 0600) before the volume needs it.

    \b
    Examples:
      ebk volume init --type fscrypt /srv/pg
      ebk volume init --type luks /dev/disk/by-id/virtio-pgdata --name pgdata
      mkfs.ext4 /dev/mapper/ebk-pgdata
    """
    store, provider = _setup(config_path)
    if vtype is None:
        vtype = "luks" if target.exists() and not target.is_dir() else "fscrypt"
    kind = "luks2" if vtype == "luks" else "fscrypt"
    with _os_errors(target):
        result = manage.init(store, provider, kind, target.absolute(), name)
    click.echo(
        f"initialized {result['type']} volume {result['name']} at {result['target']} "
        f"(uuid {result['uuid']}; key object {result['key_object']}); unlocked"
        + (f" as {result['device']}" if result.get("device") else "")
    )


@volume.command("unlock")
@TARGET
@click.pass_obj
def unlock_cmd(config_path: Path | None, target: Path) -> None:
    """Unwrap the volume key with the KEK and give it to the kernel.

    Idempotent: an unlocked volume succeeds with "already unlocked" and no
    KMS call.  Exit 3 when the KMS is unreachable or the key object is not
    this volume's; exit 6 when the path is not an encrypted volume.

    \b
    Examples:
      ebk volume unlock /srv/pg
      ebk volume unlock /dev/vdb && mount /dev/mapper/ebk-vdb /srv/pg
    """
    store, provider = _setup(config_path)
    with _os_errors(target):
        _say(manage.unlock(store, provider, target.absolute()))


@volume.command("lock")
@TARGET
@click.pass_obj
def lock_cmd(config_path: Path | None, target: Path) -> None:
    """Remove the volume key from the kernel (needs no KMS); idempotent.

    fscrypt: names and contents become ciphertext again; exit 8 when files are
    still open (stop PostgreSQL and lock again).  LUKS2: closes
    /dev/mapper/ebk-NAME; exit 8 while it is mounted.

    \b
    Examples:
      ebk volume lock /srv/pg
      umount /srv/pg && ebk volume lock /dev/vdb
    """
    Runtime.load(config_path)  # validates the config, sets up logging
    with _os_errors(target):
        _say(manage.lock(target.absolute()))


@volume.command("status")
@click.argument(
    "target", metavar="[PATH_OR_DEVICE]", required=False, type=click.Path(path_type=Path)
)
@click.option("--json", "json_output", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def status_cmd(config_path: Path | None, target: Path | None, json_output: bool) -> None:
    """Volumes and whether they are unlocked: one, or every key object in key_dir.

    \b
    Examples:
      ebk volume status
      ebk volume status /srv/pg --json
    """
    store, _ = _setup(config_path)
    with _os_errors(target):
        rows = manage.status(store, target.absolute() if target else None)
    if json_output:
        emit_json(rows)
        return
    emit_table(
        ["NAME", "TYPE", "TARGET", "STATE", "KEK", "KEY OBJECT"],
        [(r.get("name", ""), r.get("type", ""), r.get("target", ""), r["state"],
          r.get("kek_id", ""), r["key_object"]) for r in rows],
    )  # fmt: skip


@volume.command("rotate")
@TARGET
@click.pass_obj
def rotate_cmd(config_path: Path | None, target: Path) -> None:
    """Replace the volume key (LUKS2); fscrypt explains its re-encryption procedure.

    LUKS2: a new random key gets a new keyslot, is proven to open the device,
    the key object is replaced (the new one was written first), then the old
    keyslot is removed.  Works while the volume is open.  The LUKS master key
    is unchanged (re-encrypting the data is `cryptsetup reencrypt`).

    \b
    Examples:
      ebk volume rotate /dev/vdb
    """
    store, provider = _setup(config_path)
    with _os_errors(target):
        result = manage.rotate(store, provider, target.absolute())
    click.echo(
        f"rotated: {result['type']} volume {result['name']} {result['target']} "
        f"(new key wrapped by {result['kek_id']}; old keyslot removed)"
    )


COMMANDS = [volume]
