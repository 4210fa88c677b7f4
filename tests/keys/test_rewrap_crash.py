"""`ebk keys rewrap` killed with SIGKILL at seeded random points, and a backup racing it.

After every kill each data key still opens (a key object is replaced whole or not at
all, and the old version still unwraps); a re-run finishes the job.  The killed run's
lease stays behind until it expires (5 minutes): the test removes it, as the lease's
hint tells an operator to do once no ebk is running.  EBK_REWRAP_SEED=N replays a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.keys.conftest import MotoKms
from tests.keys.synthetic import add_backups, prepare_backup
from tests.keys.test_awskms import awskms_toml
from tests.keys.test_keylife import all_open, runtime, status
from tests.support.ebkenv import EbkEnv, kms_env, make_env
from tests.support.openbao import Bao, vault_toml

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("EBK_REWRAP_SEED", "12"))
KILLS = 3
BACKUPS = 60


def rewrap_process(env: EbkEnv) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ebk", "--config", str(env.config_path), "keys", "rewrap"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def slow_down(env: EbkEnv, rate: int) -> None:
    env.config_path.write_text(
        env.config_path.read_text().replace(
            "[keys]\n", f"[keys]\nrewrap_rate = {rate}\nrewrap_workers = 4\n"
        )
    )


def kill_and_rerun(env: EbkEnv, deks: dict[str, bytes], seed: int) -> None:
    rng = random.Random(seed)
    current = status(env)["current_version"]
    print(f"rewrap crash test: EBK_REWRAP_SEED={seed}")
    pending: list[int] = []
    for _ in range(KILLS):
        proc = rewrap_process(env)
        time.sleep(rng.uniform(0.5, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        all_open(env, deks)  # nothing half-written: every key opens
        (env.repo_dir / "locks" / "delete.json").unlink(missing_ok=True)
        pending.append(status(env)["pending_rewrap"])
    print(f"pending after each kill: {pending} of {len(deks)}")
    done = rewrap_process(env)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err.decode()
    after = status(env)
    assert after["pending_rewrap"] == 0 and after["current_version"] == current
    assert {v["version"]: v["backups"] for v in after["versions"]}[current] == len(deks)
    all_open(env, deks)


def test_keyfile_rewrap_survives_sigkill(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None, extra='[preflight]\npolicy = "off"\n')
    deks = add_backups(runtime(env), BACKUPS)
    env.run("keys", "rotate", "--no-rewrap")
    slow_down(env, 30)
    kill_and_rerun(env, deks, SEED)


def test_transit_rewrap_survives_sigkill(openbao: Bao, tmp_path: Path) -> None:
    openbao.bao("write", "-f", "transit/keys/crash", "derived=true")
    env = kms_env(tmp_path / "ebk", None, vault_toml(openbao, key="crash"))
    deks = add_backups(runtime(env), BACKUPS)
    env.run("keys", "rotate", "--no-rewrap")
    slow_down(env, 30)
    kill_and_rerun(env, deks, SEED + 1)


def test_kms_rewrap_survives_sigkill(moto_kms: MotoKms, aws_env: None, tmp_path: Path) -> None:
    import boto3

    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_kms.endpoint)
    old = kms.create_key(Description="crash old")["KeyMetadata"]["Arn"]
    new = kms.create_key(Description="crash new")["KeyMetadata"]["Arn"]
    env = kms_env(tmp_path / "ebk", None, awskms_toml(moto_kms.endpoint, old))
    deks = add_backups(runtime(env), BACKUPS)
    env.config_path.write_text(
        env.config_path.read_text().replace(
            f'key_id = "{old}"', f'key_id = "{new}"\nprevious_key_ids = ["{old}"]'
        )
    )
    slow_down(env, 30)
    kill_and_rerun(env, deks, SEED + 2)


def test_a_backup_racing_the_rewrap_ends_under_the_new_version(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None, extra='[preflight]\npolicy = "off"\n')
    deks = add_backups(runtime(env), BACKUPS)
    rt = runtime(env)
    # a backup that wrapped its key before the rotation and is still running
    manifest, key_object, dek = prepare_backup(rt, datetime.now(UTC))
    rt.repository.create_key_object(key_object)
    env.run("keys", "rotate", "--no-rewrap")
    slow_down(env, 40)
    proc = rewrap_process(env)
    time.sleep(1.5)
    rt.repository.commit_manifest(manifest)  # it completes while the rewrap runs
    fresh = add_backups(runtime(env), 3)  # and new ones start, under the new version
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    deks.update(fresh)
    deks[manifest.backup_id] = dek
    after = status(env)
    assert after["pending_rewrap"] == 0, json.dumps(after)
    all_open(env, deks)
