"""LUKS2 (dm-crypt) through cryptsetup, the key always on a pipe (``--key-file=-``).

- init: ``luksFormat --type luks2`` (aes-xts-plain64, 512-bit, uuid chosen by ebk);
  the keyslot uses PBKDF2 at its minimum: the key is 512 random bits, so
  stretching it adds nothing and Argon2's memory cost would only slow boots;
- unlock/lock: ``open``/``close`` of /dev/mapper/ebk-NAME; lock refuses while the
  mapping is mounted or held;
- rotate: ``luksAddKey`` (old key on stdin, new key on an inherited pipe fd
  named /dev/fd/N), prove the new key with ``open --test-passphrase``, then
  ``luksRemoveKey`` of the old one.  The keyslot key changes; the LUKS master
  key (what encrypts the data) does not (that is ``cryptsetup reencrypt``).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ebk.childenv import child_env
from ebk.errors import WrongKey
from ebk.preflight.dmcrypt import LUKS_MAGIC, read_luks_header
from ebk.volume.errors import NotAnEncryptedVolume, VolumeBusy, VolumeUsageError
from ebk.volume.secret import SecretKey

SYS_BLOCK = Path("/sys/block")
CIPHER = ["--cipher", "aes-xts-plain64", "--key-size", "512"]
FAST_PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
NO_KEY_RC = 2  # cryptsetup: "No key available with this passphrase"
BUSY_RC = 5


def mapping_name(volume_name: str) -> str:
    return f"ebk-{volume_name}"


def luks_uuid(device: Path) -> str:
    """The LUKS2 header uuid, or NotAnEncryptedVolume."""
    if not device.exists():
        raise NotAnEncryptedVolume(f"{device} does not exist", hint="give the block device")
    if device.is_dir():
        raise NotAnEncryptedVolume(
            f"{device} is a directory without an fscrypt policy, not an encrypted volume",
            hint="`ebk volume init --type fscrypt` encrypts an empty directory",
        )
    try:
        header = read_luks_header(device)
    except PermissionError:
        raise VolumeUsageError(
            f"cannot read {device}: permission denied", hint="run `ebk volume` as root"
        ) from None
    except (OSError, ValueError) as exc:
        raise NotAnEncryptedVolume(
            f"{device} is not an encrypted volume ({exc})",
            hint="`ebk volume init --type luks DEVICE` formats an empty device",
        ) from None
    if header.version != 2:
        raise NotAnEncryptedVolume(
            f"{device} is LUKS{header.version}; ebk volume manages LUKS2 only",
            hint="convert it with `cryptsetup convert --type luks2`",
        )
    return header.uuid


def _cryptsetup(args: list[str], *keys: SecretKey) -> subprocess.CompletedProcess[str]:
    """Run cryptsetup with keys[0] on stdin and keys[1:] on inherited fds (/dev/fd/N in args).

    ``args`` may contain "{fd1}", "{fd2}", ...: replaced by the fd numbers of keys[1:].
    """
    fds = [k.pipe_with() for k in keys]
    try:
        argv = ["cryptsetup", *args]
        for i, fd in enumerate(fds[1:], start=1):
            argv = [a.replace(f"{{fd{i}}}", f"/dev/fd/{fd}") for a in argv]
        try:
            return subprocess.run(
                argv,
                stdin=fds[0] if fds else subprocess.DEVNULL,
                pass_fds=fds[1:],
                capture_output=True,
                text=True,
                env=child_env(),
                timeout=300,
                check=False,
            )
        except FileNotFoundError:
            raise VolumeUsageError(
                "cryptsetup is not installed", hint="apt-get install cryptsetup-bin"
            ) from None
    finally:
        for fd in fds:
            os.close(fd)


def _fail(what: str, proc: subprocess.CompletedProcess[str]) -> VolumeUsageError:
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    return VolumeUsageError(
        f"{what} failed (cryptsetup exit {proc.returncode}): {detail[-1] if detail else ''}"
    )


@dataclass(frozen=True)
class Mapping:
    name: str
    dm: str  # dm-N
    mounted_at: list[str]
    holders: list[str]


def active_mapping(uuid: str) -> Mapping | None:
    """The open dm-crypt mapping of the LUKS2 volume with this uuid, if any."""
    want = "CRYPT-LUKS2-" + uuid.replace("-", "") + "-"
    for dm in sorted(SYS_BLOCK.glob("dm-*")):
        try:
            dm_uuid = (dm / "dm" / "uuid").read_text().strip()
            if not dm_uuid.startswith(want):
                continue
            name = (dm / "dm" / "name").read_text().strip()
            majmin = (dm / "dev").read_text().strip()
            holders = sorted(p.name for p in (dm / "holders").iterdir())
        except OSError:
            continue
        return Mapping(name, dm.name, _mount_points(majmin), holders)
    return None


def _mount_points(majmin: str) -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return [f.split()[4] for f in lines if len(f.split()) > 4 and f.split()[2] == majmin]


def check_formattable(device: Path) -> None:
    """init's precondition: an existing block device holding no LUKS header or filesystem."""
    if not device.is_absolute() or not device.exists():
        raise VolumeUsageError(f"{device} does not exist", hint="give the block device's path")
    import stat

    if not stat.S_ISBLK(os.stat(device).st_mode):
        raise VolumeUsageError(
            f"{device} is not a block device",
            hint="LUKS2 formats a disk or partition (e.g. /dev/vdb, /dev/disk/by-id/...)",
        )
    with device.open("rb") as fh:
        head = fh.read(6)
    if head == LUKS_MAGIC:
        raise VolumeUsageError(
            f"{device} already holds a LUKS header; refusing to format it",
            hint="`ebk volume unlock` opens an ebk volume; `cryptsetup luksErase` first if the "
            "old volume is really unwanted",
        )
    probe = subprocess.run(
        ["blkid", "-p", "-o", "export", str(device)],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    if probe.returncode == 0:
        kind = next(
            (ln.split("=", 1)[1] for ln in probe.stdout.splitlines() if ln.startswith("TYPE=")),
            "a signature",
        )
        raise VolumeUsageError(
            f"{device} holds {kind}; refusing to format it",
            hint="give an empty device (`wipefs -a DEVICE` if its contents are unwanted)",
        )


def format_device(device: Path, uuid: str, key: SecretKey) -> None:
    proc = _cryptsetup(
        ["luksFormat", "--batch-mode", "--type", "luks2", *CIPHER, *FAST_PBKDF,
         "--uuid", uuid, "--key-file=-", str(device)],
        key,
    )  # fmt: skip
    if proc.returncode != 0:
        raise _fail(f"luksFormat of {device}", proc)


def open_device(device: Path, name: str, key: SecretKey) -> None:
    proc = _cryptsetup(["open", "--type", "luks2", "--key-file=-", str(device), name], key)
    if proc.returncode == NO_KEY_RC:
        raise WrongKey(
            f"the volume key does not open {device}",
            hint="the key object is not this device's (or its keyslot was removed)",
        )
    if proc.returncode != 0:
        raise _fail(f"opening {device} as /dev/mapper/{name}", proc)


def key_opens(device: Path, key: SecretKey) -> bool:
    proc = _cryptsetup(["open", "--test-passphrase", "--key-file=-", str(device)], key)
    if proc.returncode not in (0, NO_KEY_RC):
        raise _fail(f"testing a key on {device}", proc)
    return proc.returncode == 0


def close(uuid: str, device: Path) -> str:
    mapping = active_mapping(uuid)
    if mapping is None:
        return "already locked"
    if mapping.mounted_at or mapping.holders:
        users = ", ".join(mapping.mounted_at + mapping.holders)
        raise VolumeBusy(
            f"/dev/mapper/{mapping.name} ({device}) is in use: {users}",
            hint="stop PostgreSQL/containers and unmount it, then run `ebk volume lock` again",
        )
    proc = _cryptsetup(["close", mapping.name])
    if proc.returncode == BUSY_RC:
        raise VolumeBusy(f"/dev/mapper/{mapping.name} is busy", hint="close what holds it")
    if proc.returncode != 0:
        raise _fail(f"closing /dev/mapper/{mapping.name}", proc)
    return "locked"


def add_key(device: Path, old: SecretKey, new: SecretKey) -> None:
    proc = _cryptsetup(
        ["luksAddKey", "--batch-mode", *FAST_PBKDF, "--key-file=-", str(device), "{fd1}"],
        old,
        new,
    )
    if proc.returncode == NO_KEY_RC:
        raise WrongKey(f"the current volume key does not open {device}")
    if proc.returncode != 0:
        raise _fail(f"adding a keyslot to {device}", proc)


def remove_key(device: Path, old: SecretKey) -> None:
    proc = _cryptsetup(["luksRemoveKey", "--batch-mode", "--key-file=-", str(device)], old)
    if proc.returncode != 0:
        raise _fail(f"removing the old keyslot of {device}", proc)
