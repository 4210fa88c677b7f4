"""Seeded fault injection (slow tier): kill -9 at seeded moments of backup, restore,
delete and KEK rotation + rewrap, and a full filesystem under the restore target.

Asserts what an operator relies on after a bad day: no traceback, only documented exit
codes, every listed backup restores, and `repo check --clean` finds and removes what the
killed runs left. The seed is printed; rerun one with EBK_FAULT_SEED=N (EBK_FAULT_ROUNDS
sets the number of kills, default 5). S3 resets/stalls through tests/storage/faultproxy.py
are covered by tests/storage/test_cli_backends.py."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebk.errors import EXIT_CODES
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster, init_cluster, make_postgres_dir

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("EBK_FAULT_SEED", "17"))
ROUNDS = int(os.environ.get("EBK_FAULT_ROUNDS", "5"))
DOCUMENTED = {e.code for e in EXIT_CODES} - {1}  # 1 is a bug


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """~20 MB of incompressible rows: a backup or restore takes long enough to interrupt."""
    cluster = init_cluster()
    try:
        cluster.psql(
            "CREATE EXTENSION pgcrypto; CREATE TABLE big (id int, b bytea);"
            "INSERT INTO big SELECT g, gen_random_bytes(1000) FROM generate_series(1, 20000) g"
        )
        yield cluster
    finally:
        cluster.destroy()


def ebk(env: EbkEnv, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ebk", *args],
        env=dict(os.environ, EBK_CONFIG=str(env.config_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], what: str) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, f"{what}: traceback\n{err}"
    if proc.returncode >= 0:
        assert proc.returncode in DOCUMENTED, f"{what}: undocumented exit {proc.returncode}\n{err}"
    return proc.returncode, out, err


def timed(env: EbkEnv, *args: str) -> float:
    start = time.monotonic()
    code, _, err = finish(ebk(env, *args), " ".join(args))
    assert code == 0, err
    return time.monotonic() - start


def listed(env: EbkEnv) -> list[str]:
    code, out, err = finish(ebk(env, "list", "--json"), "list")
    assert code == 0, err
    return [str(b["backup_id"]) for b in json.loads(out) if b["kind"] == "physical"]


def restore_dir(base: Path, name: str) -> Path:
    target = base / name
    shutil.rmtree(target, ignore_errors=True)
    return target


def test_kill9_at_seeded_moments(cluster: PgCluster, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"fault tier: EBK_FAULT_SEED={SEED} EBK_FAULT_ROUNDS={ROUNDS}")
    env = make_env(tmp_path / "ebk", cluster, extra='[preflight]\npolicy = "off"\n')
    scratch = make_postgres_dir("ebk-fault-")
    try:
        backup_time = timed(env, "backup", "--type", "physical")
        first = listed(env)[0]
        restore_time = timed(env, "restore", first, "--to", str(restore_dir(scratch, "probe")))
        killed: list[tuple[str, float]] = []
        for round_ in range(ROUNDS):
            ops = ["backup", "restore", "rewrap"] + (["delete"] if len(listed(env)) > 1 else [])
            op = rng.choice(ops)
            if op == "backup":
                delay = rng.uniform(0, backup_time)
                proc = ebk(env, "backup", "--type", "physical")
            elif op == "restore":
                delay = rng.uniform(0, restore_time)
                target = restore_dir(scratch, f"killed-{round_}")
                proc = ebk(env, "restore", rng.choice(listed(env)), "--to", str(target))
            elif op == "rewrap":
                delay = rng.uniform(0, 1.0)
                proc = ebk(env, "keys", "rotate")
            else:
                delay = rng.uniform(0, 0.5)
                proc = ebk(env, "delete", rng.choice(listed(env)[1:]), "--yes")
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            finish(proc, f"{op} killed after {delay:.2f}s")
            killed.append((op, round(delay, 2)))

            if op == "restore":  # the re-run refuses clearly, or works on an untouched target
                again = ebk(env, "restore", listed(env)[0], "--to", str(target))
                code, _, err = finish(again, "restore over a killed restore")
                assert code in (0, 10), err
                if code == 10:
                    assert "ebk: error:" in err and "hint:" in err

        print(f"fault tier: killed {killed}")
        for backup_id in listed(env):  # nothing is listed that does not restore
            target = restore_dir(scratch, "check")
            code, _, err = finish(ebk(env, "restore", backup_id, "--to", str(target)), "restore")
            assert code == 0, f"listed backup {backup_id} does not restore (seed {SEED}): {err}"
            assert (target / "global" / "pg_control").is_file()

        code, _, err = finish(ebk(env, "repo", "check", "--clean", "--older-than", "0s"), "clean")
        assert code == 0, err
        code, out, err = finish(ebk(env, "repo", "check", "--json"), "repo check")
        report = json.loads(out)
        assert report["incomplete_backups"] == [] and report["orphaned_uploads"] == [], report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.root
def test_full_restore_target_is_a_clear_refusal(cluster: PgCluster, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    env = make_env(tmp_path / "ebk", cluster, extra='[preflight]\npolicy = "off"\n')
    timed(env, "backup", "--type", "physical")
    mount = make_postgres_dir("ebk-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        code, out, err = finish(ebk(env, "restore", "latest", "--to", str(mount / "data")), "full")
        assert code == 10, err
        assert out == "" and err.count("ebk: error:") == 1 and "hint:" in err
        assert not (mount / "data" / "global" / "pg_control").exists()  # never startable
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)
