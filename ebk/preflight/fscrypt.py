"""fscrypt (ext4/f2fs/ubifs/ceph native encryption): the directory's policy, by ioctl.

FS_IOC_GET_ENCRYPTION_POLICY_EX returns the v1 or v2 policy of a directory
with its contents and filenames modes; ENODATA means the directory has none.
The fscrypt CLI is not needed (and its view of "protectors" is not the
kernel's truth).  Children of an encrypted directory always share its policy,
so checking the directory (or the nearest existing parent of a path yet to be
created) covers everything written below it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ebk.preflight.model import Evidence, Status


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("f") << 8) | nr


_READ, _WRITE = 2, 1
FS_IOC_GET_ENCRYPTION_POLICY = _ioc(_WRITE, 21, 12)
FS_IOC_GET_ENCRYPTION_POLICY_EX = _ioc(_READ | _WRITE, 22, 9)
FS_IOC_GET_ENCRYPTION_KEY_STATUS = _ioc(_READ | _WRITE, 26, 128)

MODES = {
    1: "AES-256-XTS",
    2: "AES-256-GCM",
    3: "AES-256-CBC",
    4: "AES-256-CTS",
    5: "AES-128-CBC-ESSIV",
    6: "AES-128-CTS",
    7: "SM4-XTS",
    8: "SM4-CTS",
    9: "Adiantum",
    10: "AES-256-HCTR2",
}
FLAGS = {0x04: "DIRECT_KEY", 0x08: "IV_INO_LBLK_64", 0x10: "IV_INO_LBLK_32"}
KEY_STATUS = {1: "absent (locked)", 2: "present (unlocked)", 3: "being removed"}
POLICY_UNION_SIZE = 24


@dataclass(frozen=True)
class Policy:
    version: int
    contents_mode: int
    filenames_mode: int
    flags: int
    key_id: bytes

    @property
    def contents(self) -> str:
        return MODES.get(self.contents_mode, f"mode {self.contents_mode}")

    @property
    def filenames(self) -> str:
        return MODES.get(self.filenames_mode, f"mode {self.filenames_mode}")

    @property
    def flag_names(self) -> list[str]:
        names = [name for bit, name in FLAGS.items() if self.flags & bit]
        names.append(f"PAD_{4 << (self.flags & 0x03)}")
        return names


def parse_policy(raw: bytes) -> Policy:
    """Decode the policy union (v1: 8-byte descriptor, v2: 16-byte identifier)."""
    version = raw[0]
    if version == 0:  # FSCRYPT_POLICY_V1 is 0 in the kernel ABI
        _, contents, names, flags, desc = struct.unpack("=BBBB8s", raw[:12])
        return Policy(1, contents, names, flags, desc)
    if version == 2:
        _, contents, names, flags, ident = struct.unpack("=BBBB4x16s", raw[:24])
        return Policy(2, contents, names, flags, ident)
    raise ValueError(f"unknown fscrypt policy version {version}")


def get_policy(path: Path) -> Policy | None:
    """The policy of ``path``; None when it has none; OSError when unsupported."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = bytearray(struct.pack("=Q", POLICY_UNION_SIZE) + bytes(POLICY_UNION_SIZE))
        try:
            fcntl.ioctl(fd, FS_IOC_GET_ENCRYPTION_POLICY_EX, buf)
            return parse_policy(bytes(buf[8:]))
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                return None
            if exc.errno != errno.ENOTTY:
                raise
        old = bytearray(12)  # kernels before 5.4 only know v1 and the old ioctl
        try:
            fcntl.ioctl(fd, FS_IOC_GET_ENCRYPTION_POLICY, old)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                return None
            raise
        return parse_policy(bytes(old))
    finally:
        os.close(fd)


def key_status(path: Path, policy: Policy) -> str:
    """Whether the master key is in the filesystem keyring (v2 policies only)."""
    if policy.version != 2:
        return ""
    arg = bytearray(struct.pack("=II32s", 2, 0, policy.key_id) + bytes(128 - 40))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FS_IOC_GET_ENCRYPTION_KEY_STATUS, arg)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return KEY_STATUS.get(struct.unpack("=I", arg[64:68])[0], "")


def fscrypt_evidence(path: Path, mount_point: str) -> Evidence | None:
    """Evidence for the directory, or None when the filesystem has no fscrypt support."""
    try:
        policy = get_policy(path)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return None
        return Evidence(Status.UNKNOWN, "fscrypt", f"cannot read the policy of {path}: {exc}")
    if policy is None:
        return Evidence(
            Status.UNENCRYPTED,
            "fscrypt",
            f"{mount_point} supports fscrypt but {path} has no encryption policy",
        )
    cipher = f"contents {policy.contents}, filenames {policy.filenames}"
    where = (
        f"v{policy.version} master key {policy.key_id.hex()} in the filesystem keyring"
        if policy.version == 2
        else f"v1 master key descriptor {policy.key_id.hex()} in a process/session keyring"
    )
    state = key_status(path, policy)
    if state:
        where += f", {state}"
    if (Path(mount_point) / ".fscrypt").is_dir():
        where += f"; wrapped by fscrypt protectors in {Path(mount_point) / '.fscrypt'}"
    detail = (
        f"{path} has an fscrypt v{policy.version} policy ({cipher}; "
        f"flags {', '.join(policy.flag_names)})"
    )
    return Evidence(Status.ENCRYPTED, f"fscrypt v{policy.version}", detail, cipher, where)
