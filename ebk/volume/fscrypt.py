"""fscrypt v2 through the kernel's ioctls (no fscrypt CLI, no key file on disk).

- add key: FS_IOC_ADD_ENCRYPTION_KEY with the raw 64-byte key; the kernel answers
  with the key identifier (HKDF-SHA512 of the key), which is also what the
  directory's v2 policy names, so it is the volume's uuid;
- init: add the key, set a v2 policy (AES-256-XTS contents, AES-256-CTS names,
  32-byte name padding) on an empty directory, prove it by creating a file;
- lock: FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS; the kernel evicts the cached
  plaintext and reports files still open (they stay readable until closed);
- status: FS_IOC_GET_ENCRYPTION_KEY_STATUS.

The ioctl argument holding the key is built inside the SecretKey's locked buffer
and passed to libc's ioctl by address: fcntl.ioctl would copy it through a
static buffer that nobody wipes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
from pathlib import Path

from ebk.preflight.fscrypt import Policy, get_policy
from ebk.volume.errors import NotAnEncryptedVolume, VolumeBusy, VolumeUsageError
from ebk.volume.secret import SecretKey


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("f") << 8) | nr


FS_IOC_SET_ENCRYPTION_POLICY = _ioc(2, 19, 12)
FS_IOC_ADD_ENCRYPTION_KEY = _ioc(3, 23, 80)
FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS = _ioc(3, 25, 64)
FS_IOC_GET_ENCRYPTION_KEY_STATUS = _ioc(3, 26, 128)
KEY_SPEC_IDENTIFIER = 2
AES_256_XTS, AES_256_CTS, PAD_32 = 1, 4, 0x02
STATUS_ABSENT, STATUS_PRESENT, STATUS_INCOMPLETELY_REMOVED = 1, 2, 3
REMOVAL_FILES_BUSY = 0x1
STATES = {STATUS_ABSENT: "locked", STATUS_PRESENT: "unlocked", STATUS_INCOMPLETELY_REMOVED: "busy"}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def volume_policy(path: Path) -> Policy:
    """The v2 policy of ``path``, or NotAnEncryptedVolume saying why there is none."""
    try:
        policy = get_policy(path)
    except FileNotFoundError:
        raise NotAnEncryptedVolume(
            f"{path} does not exist", hint="give the encrypted directory `ebk volume init` made"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise NotAnEncryptedVolume(
                f"{path} is not an fscrypt directory: its filesystem has no fscrypt support",
                hint="for a LUKS2 device give the block device; for fscrypt, ext4 needs "
                "`tune2fs -O encrypt DEVICE`",
            ) from None
        raise NotAnEncryptedVolume(f"cannot read the fscrypt policy of {path}: {exc}") from None
    if policy is None:
        raise NotAnEncryptedVolume(
            f"{path} is not an encrypted volume: it has no fscrypt policy",
            hint="create one with `ebk volume init --type fscrypt` on an empty directory",
        )
    if policy.version != 2:
        raise NotAnEncryptedVolume(
            f"{path} has an fscrypt v{policy.version} policy, which ebk does not manage",
            hint="ebk volume keys use v2 policies only; re-encrypt into a new directory",
        )
    return policy


def _keyring_fd(path: Path) -> int:
    """An fd on the filesystem's root: keyring ioctls issued through a file inside the
    encrypted tree would hold that tree open (and removal would report it busy)."""
    root = Path(os.path.realpath(path))
    while not os.path.ismount(root) and root != root.parent:
        root = root.parent
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _spec(ident: bytes) -> bytes:
    return struct.pack("=II32s", KEY_SPEC_IDENTIFIER, 0, ident)


def key_state(path: Path, ident: bytes) -> int:
    arg = bytearray(_spec(ident) + bytes(128 - 40))
    fd = _keyring_fd(path)
    try:
        fcntl.ioctl(fd, FS_IOC_GET_ENCRYPTION_KEY_STATUS, arg)
    finally:
        os.close(fd)
    state: int = struct.unpack_from("=I", arg, 64)[0]
    return state


def add_key(path: Path, key: SecretKey) -> bytes:
    """Put the key in the filesystem keyring; the kernel's identifier for it."""
    with SecretKey(80 + len(key)) as arg:
        struct.pack_into("=II32sII", arg.buf, 0, 2, 0, b"", len(key), 0)
        ctypes.memmove(arg.address + 80, key.address, len(key))
        fd = _keyring_fd(path)
        try:
            if _libc.ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, arg.address) != 0:
                err = ctypes.get_errno()
                raise VolumeUsageError(
                    f"the kernel refused the fscrypt key for {path}: {os.strerror(err)}",
                    hint="ext4 needs the encrypt feature (`tune2fs -O encrypt DEVICE`) and "
                    "adding keys needs root",
                )
        finally:
            os.close(fd)
        return bytes(arg.buf[8:24])


def remove_key(path: Path, ident: bytes) -> int:
    """Remove the key for every user; the removal status flags."""
    arg = bytearray(_spec(ident) + bytes(64 - 40))
    fd = _keyring_fd(path)
    try:
        fcntl.ioctl(fd, FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, arg)
    finally:
        os.close(fd)
    flags: int = struct.unpack_from("=I", arg, 40)[0]
    return flags


def check_empty_dir(path: Path) -> None:
    """init's precondition: an empty directory without a policy (or a new one)."""
    if not path.is_absolute():
        raise VolumeUsageError(f"{path} is not an absolute path", hint="give the full path")
    if path.exists():
        if not path.is_dir() or path.is_symlink():
            raise VolumeUsageError(
                f"{path} is not a directory", hint="fscrypt encrypts a directory; give one"
            )
        if any(path.iterdir()):
            raise VolumeUsageError(
                f"{path} is not empty; fscrypt can only encrypt an empty directory",
                hint="init a new directory and copy the data in (docs/setup.md); nothing was "
                "changed",
            )
        try:
            if get_policy(path) is not None:
                raise VolumeUsageError(
                    f"{path} already has an fscrypt policy",
                    hint="it is already encrypted: `ebk volume unlock` it, or init a new directory",
                )
        except OSError:
            pass  # no fscrypt support: add_key reports it with the fix
    elif not path.parent.is_dir():
        raise VolumeUsageError(f"{path.parent} does not exist", hint="create the parent first")


def set_policy(path: Path, ident: bytes) -> None:
    """Set the v2 policy on the empty ``path`` (created 0700 when missing) and prove it."""
    created = not path.exists()
    if created:
        path.mkdir(mode=0o700)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        policy = struct.pack("=BBBB4x16s", 2, AES_256_XTS, AES_256_CTS, PAD_32, ident)
        fcntl.ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, bytearray(policy))
        # The kernel accepts a policy for a cipher it lacks; the first file decides.
        probe = os.open(".ebk-probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd)
        os.close(probe)
        os.unlink(".ebk-probe", dir_fd=fd)
    except OSError as exc:
        _undo_policy(path, created)
        raise VolumeUsageError(
            f"cannot encrypt {path} with AES-256-XTS/AES-256-CTS: {exc.strerror or exc}",
            hint="the kernel needs CONFIG_FS_ENCRYPTION and the xts/cts/aes algorithms; "
            "nothing was kept",
        ) from None
    finally:
        os.close(fd)


def _undo_policy(path: Path, created: bool) -> None:
    """A policy cannot be removed: recreate the (empty) directory as it was."""
    try:
        st = path.stat()
        path.rmdir()
        if not created:
            path.mkdir(mode=st.st_mode & 0o7777)
            os.chown(path, st.st_uid, st.st_gid)
    except OSError:
        pass


def open_users(path: Path, limit: int = 5) -> list[str]:
    """Processes with a file, directory or cwd under ``path`` ("postgres (pid 42)")."""
    root = os.path.realpath(path)
    users: list[str] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == str(os.getpid()):
            continue
        try:
            links = [os.readlink(proc / "cwd")]
            links += [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue  # gone, or not ours to inspect
        if any(link == root or link.startswith(root + "/") for link in links):
            try:
                comm = (proc / "comm").read_text().strip()
            except OSError:
                comm = "?"
            users.append(f"{comm} (pid {proc.name})")
            if len(users) >= limit:
                break
    return users


def lock(path: Path, ident: bytes) -> str:
    """Remove the key; "locked", "already locked", or VolumeBusy when files are open.

    Open files are refused *before* the removal: a removal with busy files leaves
    the key half-removed, and a running PostgreSQL could then open no new file.
    """
    state = key_state(path, ident)
    if state == STATUS_ABSENT:
        return "already locked"
    users = open_users(path) if state == STATUS_PRESENT else []
    if users:
        raise VolumeBusy(
            f"{path} is in use by {', '.join(users)}; nothing was changed",
            hint="stop PostgreSQL (and the containers using it), then run `ebk volume lock` again",
        )
    flags = remove_key(path, ident)
    if flags & REMOVAL_FILES_BUSY:
        raise VolumeBusy(
            f"{path}: the key was removed but files under it are still open; they stay "
            "readable until closed",
            hint="stop what uses them (PostgreSQL, containers), then run `ebk volume lock` again",
        )
    return "locked"
