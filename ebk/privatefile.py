"""Read a secret file (key file, password file) safely: one open, checks on the descriptor.

The checks run on what was opened, never on a path looked up again later, so
nobody can swap the file between the check and the read:

- the final component is opened with O_NOFOLLOW relative to its directory's
  descriptor; a symlink is followed only explicitly, once, and only when the
  directory holding the link cannot be written by anyone but its owner or
  root (otherwise another user could point it elsewhere);
- the file must be a regular file, owned by the user running ebk (or root),
  with no group or other permission bits;
- its directory must be owned by that user (or root) and not writable by
  group or others (otherwise another user could replace the file).

``resolve_private_path`` returns the file the checks apply to, so that a
writer (key rotation) replaces the symlink's target, not the symlink.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path

from ebk.errors import EbkError

MAX_SIZE = 1024 * 1024


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user(uid: int) -> str:
    return f"{_name(uid)} (uid {uid})"


def _trusted_owner(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def _check_directory(
    st: os.stat_result, read_only: bool, directory: Path, what: str, path: Path
) -> str | None:
    """Why another user could replace entries of ``directory``, or None.

    Writable by group/others is fine on a read-only file system (Kubernetes
    secret volumes) and with the sticky bit (then only an entry's owner may
    replace it, and the entry's owner is checked separately).
    """
    if not _trusted_owner(st.st_uid):
        return (
            f"{what} {path} is in directory {directory} owned by {_user(st.st_uid)}, "
            "who could replace it; refusing to use it"
        )
    shared = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and not read_only and not st.st_mode & stat.S_ISVTX:
        return (
            f"{what} {path} is in directory {directory}, which group or others can write "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): anyone there could replace it; "
            "refusing to use it"
        )
    return None


def _read_only(directory: Path | int) -> bool:
    try:
        flags = (
            os.fstatvfs(directory).f_flag
            if isinstance(directory, int)
            else (os.statvfs(directory).f_flag)
        )
    except OSError:
        return False
    return bool(flags & os.ST_RDONLY)


def resolve_private_path(path: Path, what: str, error: type[EbkError]) -> Path:
    """``path`` itself, or the target of a symlink whose directory only trusted users can write."""
    try:
        st = os.lstat(path)
    except OSError:
        return path  # open() reports it, with the right message
    if not stat.S_ISLNK(st.st_mode):
        return path
    directory = path.parent
    try:
        problem = _check_directory(
            os.stat(directory), _read_only(directory), directory, f"{what} (symlink)", path
        )
    except OSError as exc:
        raise error(f"{what} {path}: cannot inspect {directory}: {exc.strerror}") from None
    if problem is None and not _trusted_owner(st.st_uid):
        problem = f"{what} {path} is a symlink owned by {_user(st.st_uid)}; refusing to follow it"
    if problem:
        raise error(
            problem,
            hint=f"point the config at the real file ({os.path.realpath(path)}) "
            "or move the symlink into a private directory",
        )
    return Path(os.path.realpath(path))


def read_private_file(
    path: Path, what: str, error: type[EbkError], *, missing_hint: str
) -> tuple[Path, bytes]:
    """The checked bytes of a secret file and the path they came from (symlink resolved).

    Every failure is one ``error`` with a hint that fits it.
    """
    real = resolve_private_path(path, what, error)
    shown = path if real == path else Path(f"{path} -> {real}")
    try:
        dir_fd = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{what} {shown} does not exist", hint=missing_hint) from None
    except OSError as exc:
        raise error(
            f"cannot open the directory of {what} {shown}: {exc.strerror}",
            hint=f"check the permissions of {real.parent} and its parents "
            f"for {_user(os.geteuid())}",
        ) from None
    try:
        problem = _check_directory(os.fstat(dir_fd), _read_only(dir_fd), real.parent, what, shown)
        if problem:
            raise error(problem, hint=f"run `chmod go-w {real.parent}`, or move the file")
        try:
            fd = os.open(
                real.name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK,
                dir_fd=dir_fd,
            )
        except FileNotFoundError:
            raise error(f"{what} {shown} does not exist", hint=missing_hint) from None
        except PermissionError:
            raise error(
                f"{what} {shown} is not readable by {_user(os.geteuid())}",
                hint=f"run ebk as the user that owns {real}, or check its owner and mode "
                "(it must be owned by that user, mode 0600)",
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise error(
                    f"{what} {shown} became a symlink while it was opened; refusing to follow it",
                    hint="check who can write to its directory",
                ) from None
            raise error(f"cannot open {what} {shown}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(
                f"{what} {shown} is a directory, not a file",
                hint="point the configuration at the file itself, not at the directory "
                "that holds it (`ebk init` creates a key file)",
            )
        if not stat.S_ISREG(st.st_mode):
            raise error(
                f"{what} {shown} is not a regular file",
                hint="a key or password file must be a plain file with mode 0600",
            )
        if not _trusted_owner(st.st_uid):
            raise error(
                f"{what} {shown} is owned by {_user(st.st_uid)}, not by {_user(os.geteuid())} "
                "who runs ebk; refusing to use it",
                hint=f"run `chown {_name(os.geteuid())} {real}` if that is right, "
                "and check who could have changed it",
            )
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise error(
                f"{what} {shown} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it",
                hint=f"run `chmod 600 {real}` and check who could have copied it",
            )
        data = b""
        while len(data) <= MAX_SIZE and (part := os.read(fd, MAX_SIZE + 1 - len(data))):
            data += part
    finally:
        os.close(fd)
    if len(data) > MAX_SIZE:
        raise error(f"{what} {shown} is larger than {MAX_SIZE} bytes; it is not a {what}")
    return real, data
