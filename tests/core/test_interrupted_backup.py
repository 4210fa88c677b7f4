"""A backup killed mid-stream is never listed, and the next backup does not trip on it.

`python -m ebk backup` runs as a real process against a real PostgreSQL 15
holding ~200 MB of incompressible rows, so the stream is still being written
when the signal arrives: the test waits until a partial data object of
several MB exists before it sends the signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebk.repository import Repository
from ebk.storage.local import LocalStorage
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster, init_cluster
from tests.support.refusal import assert_refused

BIG_ROWS = 200_000  # x 1000 random bytes
PARTIAL_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def big_cluster() -> Iterator[PgCluster]:
    cluster = init_cluster()
    try:
        cluster.psql(
            "CREATE EXTENSION pgcrypto;"
            "CREATE TABLE big (id int, b bytea);"
            "INSERT INTO big SELECT g, gen_random_bytes(1000)"
            f" FROM generate_series(1, {BIG_ROWS}) g;"
        )
        yield cluster
    finally:
        cluster.destroy()


def start_backup(env: EbkEnv) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ebk", "backup", "--type", "physical"],
        env=dict(os.environ, EBK_CONFIG=str(env.config_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_mid_stream(env: EbkEnv, proc: subprocess.Popen[str]) -> Path:
    """Block until a partial data object of PARTIAL_BYTES exists; return its backup dir."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"backup finished before the signal: {proc.communicate()}"
        for partial in (env.repo_dir / "backups").glob("*/.ebk-partial-*"):
            try:
                if partial.stat().st_size >= PARTIAL_BYTES:
                    return partial.parent
            except FileNotFoundError:
                continue
        time.sleep(0.02)
    raise AssertionError("the backup never got mid-stream")


def listed(env: EbkEnv) -> list[dict[str, object]]:
    return list(json.loads(env.run("list", "--json").stdout))


def test_sigkill_leaves_an_orphan_that_is_never_listed(
    big_cluster: PgCluster, tmp_path: Path
) -> None:
    env = make_env(tmp_path / "ebk", big_cluster)
    proc = start_backup(env)
    try:
        backup_dir = wait_mid_stream(env, proc)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    orphan = backup_dir.name

    # The orphan is real (a key object and a half-written upload) ...
    repo = Repository(LocalStorage(env.repo_dir))
    assert [b.backup_id for b in repo.incomplete_backups()] == [orphan]
    assert [u.name for u in repo.unfinished_uploads()] == [f"backups/{orphan}/base.tar.ebk"]
    # ... and never listed, shown or restorable.
    assert listed(env) == []
    env.run("show", orphan, expect=9)
    env.run("restore", orphan, "--to", str(tmp_path / "never"), expect=9)
    assert not (tmp_path / "never").exists()

    # The next backup runs to completion and is the only one listed.
    done = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    assert done["backup_id"] != orphan
    assert [b["backup_id"] for b in listed(env)] == [done["backup_id"]]
    env.run("show", "latest")


def test_sigterm_cleans_up_and_exits_130(big_cluster: PgCluster, tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", big_cluster)
    proc = start_backup(env)
    try:
        backup_dir = wait_mid_stream(env, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert_refused(
        subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
        130,
        mentions="interrupted",
    )
    # Cleaned up: no committed object, no partial upload, nothing listed.
    assert not backup_dir.exists() or list(backup_dir.iterdir()) == []
    repo = Repository(LocalStorage(env.repo_dir))
    assert repo.incomplete_backups() == []
    assert repo.unfinished_uploads() == []
    assert listed(env) == []
    # The walsender and its temporary slot are gone: the cluster takes the next backup.
    deadline = time.monotonic() + 10
    while big_cluster.psql("SELECT count(*) FROM pg_replication_slots") != "0":
        assert time.monotonic() < deadline, "the temporary replication slot was left behind"
        time.sleep(0.1)


def test_repo_check_clean_racing_a_running_backup_never_lists_it(
    big_cluster: PgCluster, tmp_path: Path
) -> None:
    """Issue 10, finding 6: `repo check --clean --older-than 0s` while a backup streams.

    The cleaner may remove the running backup's objects (an operator chose a zero
    grace period), but the backup then fails loudly (exit 4) instead of writing a
    manifest over missing objects; nothing is listed that does not restore.
    """
    env = make_env(tmp_path / "ebk", big_cluster)
    proc = start_backup(env)
    try:
        wait_mid_stream(env, proc)
        env.run("repo", "check", "--clean", "--older-than", "0s")
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 4, err
    assert "Traceback" not in err
    assert listed(env) == []
    done = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    assert [b["backup_id"] for b in listed(env)] == [done["backup_id"]]
