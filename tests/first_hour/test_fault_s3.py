"""Seeded S3 faults (slow tier): moto behind tests/storage/faultproxy.py resets, refuses
(503, 500) and cuts seeded requests of seeded backups. Every run ends in a backup that is
listed and restores, or in exit 4 with one clear error and nothing listed; afterwards
`repo check --clean` leaves no incomplete backup and no orphaned upload."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.backends import Backend, make_backend
from tests.storage.faultproxy import FaultProxy
from tests.support.ebkenv import make_env
from tests.support.emulators import Server, unique
from tests.support.postgres import PgCluster

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("EBK_FAULT_SEED", "17"))
ROUNDS = int(os.environ.get("EBK_FAULT_S3_ROUNDS", "4"))
ENV_NAMES = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN")


@pytest.fixture
def s3(moto: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    backend = make_backend("s3", moto.endpoint, unique("ebk"), tmp_path)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    backend.apply_env(monkeypatch)
    return backend


@pytest.fixture
def proxy(s3: Backend) -> Iterator[FaultProxy]:
    fault = FaultProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    fault.start()
    yield fault
    fault.stop()


def test_seeded_s3_faults_never_list_a_broken_backup(
    s3: Backend,
    proxy: FaultProxy,
    pg_cluster: PgCluster,
    postgres_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(SEED)
    via = s3.via(proxy.endpoint)
    via.apply_env(monkeypatch)
    monkeypatch.setenv("EBK_REPOSITORY__URL", via.url)
    extra = via.storage_toml(max_retries=2) + "[backup]\ncompression_level = 0\n"
    env = make_env(tmp_path / "ebk", pg_cluster, extra=extra + '[preflight]\npolicy = "off"\n')
    outcomes = []
    for _ in range(ROUNDS):
        action = rng.choice(["drop", 503, 500])
        skip, times = rng.randint(0, 12), rng.choice([1, 2, 3, None])
        proxy.fail(lambda method, _target: method in ("PUT", "POST"), action, times, skip)
        result = env.run("backup", "--type", "physical", "--json", expect=None)
        proxy.clear()
        assert "Traceback" not in result.output
        assert result.exit_code in (0, 4), result.output
        if result.exit_code == 4:
            assert result.stdout == "" and result.stderr.count("ebk: error:") == 1
            assert "exit code 4: storage" in result.stderr
        outcomes.append((action, skip, times, result.exit_code))
    print(f"s3 fault tier: EBK_FAULT_SEED={SEED}: {outcomes}")

    for backup in json.loads(env.run("list", "--json").stdout):  # every listed one restores
        target = postgres_dir / f"restored-{backup['backup_id']}"
        env.run("restore", backup["backup_id"], "--to", str(target), "--owner", "postgres")
        assert (target / "global" / "pg_control").is_file()

    env.run("repo", "check", "--clean", "--older-than", "0s")
    report = json.loads(env.run("repo", "check", "--json").stdout)
    assert report["incomplete_backups"] == [] and report["orphaned_uploads"] == [], report
    assert s3.raw_incomplete() == []
