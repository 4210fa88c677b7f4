"""Finding 11 (issue 10) and issue 17's key-file errors, tried as an operator and an attacker.

Every refusal is exit 3 with one clear message and a hint that fits the case
(a directory never gets "chmod 600"), and no traceback.  No PostgreSQL is
needed: `ebk keys check` loads the key file and proves it wraps and unwraps.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from ebk.cli import main
from ebk.errors import KeyProviderError
from ebk.keys.keyfile import KeyFileProvider, create_key_file
from tests.support.ebkenv import EbkEnv

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def _env(root: Path, keyfile: Path) -> EbkEnv:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "ebk.toml"
    repo = root / "repo"
    config.write_text(
        f'[repository]\nurl = "file://{repo}"\n\n[keys]\nprovider = "keyfile"\n'
        f'keyfile = "{keyfile}"\n\n[log]\nformat = "json"\n'
    )
    return EbkEnv(root, config, repo, keyfile)


def _refused(env: EbkEnv, *needles: str) -> str:
    result = env.run("keys", "check", expect=3)
    assert "ebk: error:" in result.stderr and "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


def test_a_plain_private_key_file_works(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys" / "kek.json"
    create_key_file(keyfile)
    _env(tmp_path / "ebk", keyfile).run("keys", "check")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    keydir.mkdir(mode=0o755)
    err = _refused(_env(tmp_path / "ebk", keydir), "is a directory, not a file", "file itself")
    assert "chmod" not in err


def test_missing_file(tmp_path: Path) -> None:
    _refused(_env(tmp_path / "ebk", tmp_path / "nope.json"), "does not exist", "ebk init")


def test_group_writable_directory(tmp_path: Path) -> None:
    keyfile = tmp_path / "shared" / "kek.json"
    create_key_file(keyfile)
    keyfile.parent.chmod(0o775)
    _refused(_env(tmp_path / "ebk", keyfile), "group or others can write", "chmod go-w")


def test_sticky_world_writable_directory_is_accepted(tmp_path: Path) -> None:
    """Like /tmp: others may create entries but cannot replace ours."""
    keyfile = tmp_path / "sticky" / "kek.json"
    create_key_file(keyfile)
    keyfile.parent.chmod(0o1777)
    _env(tmp_path / "ebk", keyfile).run("keys", "check")


def test_fifo_is_not_a_regular_file_and_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "kek.json"
    os.mkfifo(fifo, 0o600)
    _refused(_env(tmp_path / "ebk", fifo), "not a regular file")


def test_symlink_in_a_private_directory_is_followed_and_rotation_keeps_it(
    tmp_path: Path,
) -> None:
    target = tmp_path / "vault" / "kek-real.json"
    create_key_file(target)
    link = tmp_path / "etc" / "kek.json"
    link.parent.mkdir()
    link.symlink_to(target)
    env = _env(tmp_path / "ebk", link)
    env.run("keys", "check")
    before = json.loads(target.read_text())["primary"]
    new_primary = KeyFileProvider(link).rotate()  # what `ebk keys rotate` runs
    assert link.is_symlink() and link.resolve() == target
    doc = json.loads(target.read_text())
    assert doc["primary"] == new_primary != before and len(doc["keys"]) == 2
    assert target.stat().st_mode & 0o777 == 0o600


def test_symlink_in_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "vault" / "kek.json"
    create_key_file(target)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone could re-point the link
    (shared / "kek.json").symlink_to(target)
    _refused(_env(tmp_path / "ebk", shared / "kek.json"), "symlink", "refusing", str(target))


@needs_root
def test_file_owned_by_another_user(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys" / "kek.json"
    create_key_file(keyfile)
    uid = pwd.getpwnam("postgres").pw_uid
    os.chown(keyfile, uid, -1)
    _refused(_env(tmp_path / "ebk", keyfile), "owned by postgres", "chown")


@needs_root
def test_directory_owned_by_another_user(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys" / "kek.json"
    create_key_file(keyfile)
    os.chown(keyfile.parent, pwd.getpwnam("postgres").pw_uid, -1)
    _refused(_env(tmp_path / "ebk", keyfile), "owned by postgres", "could replace it")


@needs_root
def test_unreadable_key_file_is_an_operator_error(postgres_dir: Path) -> None:
    """ebk runs as `postgres`; the key file is root's 0600 file (PermissionError).

    The CLI runs in a forked child that really switches to the postgres user
    (the worktree itself may not be readable by postgres, so no fresh interpreter).
    """
    keydir = postgres_dir / "keys"
    keyfile = keydir / "kek.json"
    create_key_file(keyfile)  # root-owned, 0600
    keydir.chmod(0o755)
    env = _env(postgres_dir / "ebk", keyfile)
    env.config_path.chmod(0o644)
    env.root.chmod(0o755)
    entry = pwd.getpwnam("postgres")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become postgres, run the CLI, report through the pipe
        code = 99
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
            os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
            result = CliRunner().invoke(
                main, ["--config", str(env.config_path), "keys", "check"], catch_exceptions=True
            )
            os.write(write_end, json.dumps([result.exit_code, result.output]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        exit_code, output = json.loads(pipe.read() or b'[null, ""]')
    os.waitpid(pid, 0)
    assert exit_code == 3, output
    assert "not readable by postgres" in output and "Traceback" not in output
    assert "chmod 600" not in output


def test_checks_apply_to_the_bytes_read(tmp_path: Path) -> None:
    """An attacker-style race: the path flips between a private key file and a
    world-readable one with other keys.  Every successful load must have read the
    private file; the old stat-then-read could pair one file's mode with the other's bytes."""
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good_primary = create_key_file(good)
    create_key_file(bad)
    bad.chmod(0o644)
    path = tmp_path / "kek.json"
    good_copy, bad_copy = tmp_path / "good.copy", tmp_path / "bad.copy"
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            for src, tmp in ((good, good_copy), (bad, bad_copy)):
                shutil.copy2(src, tmp)
                os.replace(tmp, path)

    flipper = threading.Thread(target=flip)
    flipper.start()
    loaded = refused = 0
    try:
        for _ in range(400):
            try:
                provider = KeyFileProvider(path)
            except KeyProviderError:
                refused += 1
                continue
            assert provider.primary_kek_id == good_primary
            loaded += 1
    finally:
        stop.set()
        flipper.join()
    assert loaded + refused == 400


def test_init_with_a_directory_as_key_file(tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    keydir.mkdir()
    result = _env(tmp_path / "ebk", keydir).run("init", expect=3)
    assert "is a directory" in result.stderr and "Traceback" not in result.output
    assert "kek.json" in result.stderr and "chmod" not in result.stderr


def test_init_in_a_directory_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    result = _env(tmp_path / "ebk", blocker / "kek.json").run("init", expect=3)
    assert "cannot create key file" in result.stderr and "Traceback" not in result.output
