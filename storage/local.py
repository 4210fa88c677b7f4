"""Local-directory storage (``file:///path``): the embedded default.

Writes go to a hidden partial file beside the target and are renamed into
place only after fsync of the file, then of the directory, so a crash never
leaves a half-written object under its final name.
"""

from __future__ import annotations

import builtins
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ebk.errors import ObjectNotFound, StorageError
from ebk.storage.base import IncompleteUpload, ObjectInfo, check_name

PARTIAL_MARK = ".ebk-partial-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalWriter:
    def __init__(self, final: Path) -> None:
        self._final = final
        self._partial = final.with_name(f"{PARTIAL_MARK}{uuid.uuid4().hex}-{final.name}")
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file: BinaryIO | None = open(self._partial, "xb")  # noqa: SIM115
        os.chmod(self._partial, 0o600)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._file is None:
            raise StorageError("write to a finished object")
        try:
            return self._file.write(data)
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot write {self._final}: {exc.strerror}") from exc

    def commit(self) -> None:
        if self._file is None:
            raise StorageError("commit of a finished object")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._partial, self._final)
            _fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot store {self._final}: {exc.strerror}") from exc

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._partial.unlink(missing_ok=True)


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
            return LocalWriter(self._path(name))
        except OSError as exc:
            raise StorageError(f"cannot create {self._path(name)}: {exc.strerror}") from exc

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

    def get_bytes(self, name: str) -> bytes:
        with self.open_read(name) as f:
            return f.read()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._require_root()
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.startswith(PARTIAL_MARK):
                    continue
                path = Path(dirpath) / filename
                name = path.relative_to(self.root).as_posix()
                if not name.startswith(prefix):
                    continue
                st = path.stat()
                yield ObjectInfo(name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc.strerror}") from exc
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

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
