"""Real encrypted storage for preflight tests: loop-mounted ext4 (plain or with
-O encrypt), fscrypt v2 policies set by ioctl with a raw key, gocryptfs mounts."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.needs import need, need_root


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("f") << 8) | nr


FS_IOC_SET_ENCRYPTION_POLICY = _ioc(2, 19, 12)
FS_IOC_ADD_ENCRYPTION_KEY = _ioc(3, 23, 80)
FS_IOC_REMOVE_ENCRYPTION_KEY = _ioc(3, 24, 64)
AES_256_XTS, AES_256_CTS, ADIANTUM = 1, 4, 9


def add_raw_key(mount_point: Path, key: bytes) -> bytes:
    """FS_IOC_ADD_ENCRYPTION_KEY with a raw 64-byte key; returns the v2 key identifier."""
    arg = bytearray(struct.pack("=II32sII32x", 2, 0, b"", len(key), 0)) + key
    fd = os.open(mount_point, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, arg)
    finally:
        os.close(fd)
    return bytes(arg[8:24])


def remove_key(mount_point: Path, ident: bytes) -> None:
    arg = bytearray(struct.pack("=II32sI", 2, 0, ident, 0) + bytes(64 - 44))
    fd = os.open(mount_point, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_REMOVE_ENCRYPTION_KEY, arg)
    except OSError:
        pass
    finally:
        os.close(fd)


def set_v2_policy(directory: Path, ident: bytes) -> tuple[str, str]:
    """Set a v2 policy on a new ``directory`` and prove it by creating a file.

    AES-256-XTS/AES-256-CTS first, Adiantum if the kernel lacks the AES modes: the
    kernel accepts a policy whose algorithm it lacks and fails only at the first
    file, so a probe file decides.  Returns (contents, filenames) mode names.
    """
    for contents, names, labels in (
        (AES_256_XTS, AES_256_CTS, ("AES-256-XTS", "AES-256-CTS")),
        (ADIANTUM, ADIANTUM, ("Adiantum", "Adiantum")),
    ):
        directory.mkdir()
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.ioctl(
                fd,
                FS_IOC_SET_ENCRYPTION_POLICY,
                bytearray(struct.pack("=BBBB4x16s", 2, contents, names, 0, ident)),
            )
        finally:
            os.close(fd)
        try:
            (directory / ".probe").write_text("fscrypt works")
        except OSError:
            directory.rmdir()  # empty; a policy cannot be changed, so start over
            continue
        (directory / ".probe").unlink()
        return labels
    raise RuntimeError("no fscrypt mode works on this kernel")


@contextmanager
def loop_ext4(
    image: Path, mount_point: Path, *, size_mb: int = 96, encrypt: bool = False
) -> Iterator[Path]:
    """A real ext4 filesystem on a loop device (sparse image), unmounted afterwards."""
    need_root()
    need(shutil.which("mkfs.ext4") is not None, "mkfs.ext4 (Debian package e2fsprogs)")
    with image.open("wb") as fh:
        fh.truncate(size_mb * 1024 * 1024)
    opts = ["-O", "encrypt"] if encrypt else []
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            *opts,
            str(image),
        ],
        check=True,
    )
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@contextmanager
def gocryptfs_mount(root: Path) -> Iterator[Path]:
    """A real gocryptfs FUSE mount (cheap scrypt cost so init is fast)."""
    need_root()
    need(shutil.which("gocryptfs") is not None, "gocryptfs (Debian package gocryptfs)")
    need(Path("/dev/fuse").exists(), "/dev/fuse")
    cipher, plain, pw = root / "cipher", root / "plain", root / "passfile"
    cipher.mkdir(parents=True)
    plain.mkdir()
    pw.write_text("correct horse battery staple\n")
    subprocess.run(
        ["gocryptfs", "-q", "-init", "-scryptn", "10", "-passfile", str(pw), str(cipher)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # No pipes: the daemonized gocryptfs keeps inherited pipes open, and waiting for
    # their EOF would hang.  -fg is avoided for the same reason; the parent exits once
    # the mount is up.
    subprocess.run(
        ["gocryptfs", "-q", "-nosyslog", "-passfile", str(pw), str(cipher), str(plain)],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    try:
        yield plain
    finally:
        subprocess.run(["fusermount", "-u", "-z", str(plain)], check=False)
