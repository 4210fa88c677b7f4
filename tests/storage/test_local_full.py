"""A repository filesystem that is full: a real tmpfs of 1 MiB, mounted by the test (root).

Every write path (stream write, the flush and fsync at commit, put_bytes,
put_if_absent) must end in one StorageError that says the filesystem is full,
exit code 4, and leave no partial file behind; once space is freed the same
writes work.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebk.errors import StorageError
from ebk.storage.local import PARTIAL_MARK, LocalStorage
from tests.support.ebkenv import make_env
from tests.support.postgres import PgCluster

pytestmark = pytest.mark.root


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs; ``fill(path)`` takes every free byte."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "ebk-full", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.startswith(PARTIAL_MARK))


def assert_full_error(error: StorageError, root: Path) -> None:
    assert f"repository filesystem {root} is full" in error.message
    assert error.hint is not None and "free space" in error.hint
    assert error.exit_code == 4


def test_full_filesystem_is_an_operator_error_and_leaves_nothing(full_fs: Path) -> None:
    root = full_fs / "repo"
    storage = LocalStorage(root)
    writer = storage.open_write("backups/b1/base.tar.ebk")
    with pytest.raises(StorageError) as during_write:  # fails in write(): 2 MiB > 1 MiB
        for _ in range(32):
            writer.write(os.urandom(64 * 1024))
        writer.commit()
    assert_full_error(during_write.value, root)
    assert leftovers(root) == []
    writer.abort()  # already aborted: idempotent, never raises

    filler = fill(full_fs)
    with pytest.raises(StorageError) as at_commit:  # 100 bytes sit in the buffer until commit
        storage.put_bytes("backups/b1/manifest.json", b"m" * 100)
    assert_full_error(at_commit.value, root)
    with pytest.raises(StorageError) as create:
        storage.put_if_absent("locks/lease", b"holder")
    assert_full_error(create.value, root)
    assert leftovers(root) == []
    assert [o.name for o in storage.list()] == []

    filler.unlink()  # space freed: the same writes now succeed
    storage.put_bytes("backups/b1/manifest.json", b"m" * 100)
    storage.put_if_absent("locks/lease", b"holder")
    assert sorted(o.name for o in storage.list()) == ["backups/b1/manifest.json", "locks/lease"]


def test_backup_into_a_full_repository_exits_4_without_traceback(
    full_fs: Path, pg_cluster: PgCluster
) -> None:
    """Issue 17: this crashed with a traceback (exit 1) and left a 0-byte partial file."""
    env = make_env(full_fs / "ebk", pg_cluster)  # the repository lives on the tmpfs
    before = sorted(p.relative_to(env.repo_dir).as_posix() for p in env.repo_dir.rglob("*"))
    fill(full_fs)
    result = env.subprocess("backup", "--type", "logical", "--database", "postgres")
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    assert f"repository filesystem {env.repo_dir} is full" in result.stderr
    after = sorted(p.relative_to(env.repo_dir).as_posix() for p in env.repo_dir.rglob("*"))
    assert after == before  # no partial file, no empty backup directory
