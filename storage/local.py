"""Local-directory storage (``file:///path``): the embedded default.

Writes go to a hidden partial file beside the target and are renamed into
place only after fsync of the file, then of the directory, so a crash never
leaves a half-written object under its final name.  A full filesystem (or an
exhausted quota) at any step is an operator error, and the partial file is
removed: nothing half-written stays behind.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import structlog

from ebk.errors import ObjectExists, ObjectNotFound, StorageError
from ebk.storage.base import IncompleteUpload, ObjectInfo, check_name

log = structlog.get_logger("ebk.storage.local")

PARTIAL_MARK = ".ebk-partial-"


def storage_error(root: Path, doing: str, path: Path, exc: OSError) -> StorageError:
    """An OSError as an operator error; a full filesystem or quota says what to do."""
    if exc.errno == errno.ENOSPC:
        return StorageError(
            f"the repository filesystem {root} is full: cannot {doing} {path}",
            hint="free space there (e.g. `ebk retention` removes expired backups) or move the "
            "repository to a larger filesystem, then run the command again; nothing "
            "half-written was kept",
        )
    if exc.errno == errno.EDQUOT:
        return StorageError(
            f"the disk quota for the repository filesystem {root} is exhausted: cannot "
            f"{doing} {path}",
            hint="free space there or raise the quota, then run the command again; nothing "
            "half-written was kept",
        )
    return StorageError(f"cannot {doing} {path}: {exc.strerror or exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_empty(directory: Path, root: Path) -> None:
    """Remove ``directory`` and its parents below ``root`` while they are empty."""
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


class LocalWriter:
    def __init__(self, final: Path, root: Path) -> None:
        self._final = final
        self._root = root
        self._partial = final.with_name(f"{PARTIAL_MARK}{uuid.uuid4().hex}-{final.name}")
        for attempt in range(3):  # an abort or delete may prune the empty directory meanwhile
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                self._file: BinaryIO | None = open(self._partial, "xb")  # noqa: SIM115
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            os.chmod(self._partial, 0o600)
        except OSError:
            self.abort()
            raise

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._file is None:
            raise StorageError("write to a finished object")
        try:
            return self._file.write(data)
        except OSError as exc:
            self.abort()
            raise storage_error(self._root, "write", self._final, exc) from exc

    def _sync(self) -> None:
        """Flush and fsync the partial file, then close it."""
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def commit(self) -> None:
        if self._file is None:
            raise StorageError("commit of a finished object")
        try:
            self._sync()
            os.replace(self._partial, self._final)
            _fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise storage_error(self._root, "store", self._final, exc) from exc

    def commit_if_absent(self, name: str) -> None:
        """Publish under the final name only if it is free: link(2) fails with EEXIST."""
        if self._file is None:
            raise StorageError("commit of a finished object")
        try:
            self._sync()
            os.link(self._partial, self._final)
        except FileExistsError:
            self.abort()
            raise ObjectExists(
                f"object {name} already exists in file://{self._root}; it was not overwritten",
                hint="another writer created it first; read it, or use a new name",
            ) from None
        except OSError as exc:
            self.abort()
            raise storage_error(self._root, "store", self._final, exc) from exc
        self.abort()  # drops the partial name; the object lives on under its final name
        try:
            _fsync_dir(self._final.parent)
        except OSError as exc:
            raise storage_error(self._root, "store", self._final, exc) from exc

    def abort(self) -> None:
        """Close and remove the partial file; never raises (it runs while an error propagates)."""
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()  # a failing flush still closes the descriptor
        try:
            self._partial.unlink(missing_ok=True)
        except OSError as exc:
            log.warning(
                "could not remove a partial file; `ebk repo check --clean` removes it later",
                path=str(self._partial),
                error=exc.strerror,
            )
            return
        prune_empty(self._final.parent, self._root)


class LocalStorage:
    """Objects are files below ``root``; names map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    def _require_root(self) -> None:
        """Reading a repository that is not there is an error, not an empty list."""
        if not self.root.is_dir():
            raise StorageError(
                f"the repository directory {self.root} does not exist",
                hint="create the repository with `ebk init`, or fix repository.url",
            )

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def open_write(self, name: str) -> LocalWriter:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            return LocalWriter(self._path(name), self.root)
        except OSError as exc:
            prune_empty(self._path(name).parent, self.root)
            raise storage_error(self.root, "create", self._path(name), exc) from exc

    def open_read(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"object {name} does not exist in {self.url}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(name)}: {exc.strerror}") from exc

    def put_bytes(self, name: str, data: bytes) -> None:
        writer = self.open_write(name)
        writer.write(data)
        writer.commit()

    def put_if_absent(self, name: str, data: bytes) -> None:
        """Write a partial file, fsync it, link(2) it to the final name (EEXIST: the
        name is taken), fsync the directory.  Never overwrites; the repository
        filesystem must support hard links (ext4, xfs, btrfs, zfs, gocryptfs do)."""
        writer = self.open_write(name)
        writer.write(data)
        writer.commit_if_absent(name)

    def get_bytes(self, name: str) -> bytes:
        with self.open_read(name) as f:
            return f.read()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Only the prefix's directory is read: ``backups/2026`` reads ``backups/`` for
        entries starting with ``2026`` and walks below those.  Names come in
        lexicographic order, as the object stores return them."""
        self._require_root()
        folder, _, start = prefix.rpartition("/")
        if folder.startswith("/") or ".." in folder.split("/"):
            raise ValueError(f"invalid prefix {prefix!r}")
        yield from self._walk(self.root / folder if folder else self.root, start)

    def _walk(self, directory: Path, start: str = "") -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if e.name.startswith(start)]
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing under this prefix (or it vanished meanwhile)
        except OSError as exc:
            raise storage_error(self.root, "list", directory, exc) from exc
        dirs = {e.name for e in entries if e.is_dir(follow_symlinks=False)}
        # A directory's names sort as "name/...": comparing "name/" keeps the order exact.
        for entry in sorted(entries, key=lambda e: e.name + "/" if e.name in dirs else e.name):
            if entry.name in dirs:
                yield from self._walk(Path(entry.path))
                continue
            if entry.name.startswith(PARTIAL_MARK) or entry.is_dir():
                continue  # a partial upload, or a symlink to a directory (not followed)
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # deleted while listing
            name = Path(entry.path).relative_to(self.root).as_posix()
            yield ObjectInfo(name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc.strerror}") from exc
        prune_empty(path.parent, self.root)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list_incomplete(self) -> builtins.list[IncompleteUpload]:
        found = []
        for dirpath, _dirs, filenames in os.walk(self.root):
            for filename in filenames:
                if filename.startswith(PARTIAL_MARK):
                    path = Path(dirpath) / filename
                    final = filename[len(PARTIAL_MARK) + 33 :]
                    name = (path.parent / final).relative_to(self.root).as_posix()
                    started = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                    found.append(IncompleteUpload(name, started, str(path)))
        return found

    def remove_incomplete(self, upload: IncompleteUpload) -> None:
        Path(upload.handle).unlink(missing_ok=True)

    def close(self) -> None:
        return None
