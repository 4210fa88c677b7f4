"""SIGTERM and kill -9 of a running verifier: no PostgreSQL and no scratch directory remain
(after the next run, for kill -9).  pg_amcheck is wrapped to wait, so the signal arrives
while the scratch server is certainly running (a real server; only the pause is added)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.postgres import PG_BIN, make_postgres_dir
from tests.verify.conftest import VerifySource


def _slow_config(source: VerifySource, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the config whose PostgreSQL bin dir has a pausing pg_amcheck."""
    bindir = make_postgres_dir("ebk-slowbin-")
    mark = bindir / "amcheck-started"
    for tool in PG_BIN.iterdir():
        (bindir / tool.name).symlink_to(tool)
    (bindir / "pg_amcheck").unlink()
    (bindir / "pg_amcheck").write_text(
        f'#!/bin/sh\ntouch {mark}\nsleep 30\nexec {PG_BIN}/pg_amcheck "$@"\n'
    )
    (bindir / "pg_amcheck").chmod(0o755)
    text = source.env.config_path.read_text().replace(
        f'bin_dir = "{source.cluster.bin_dir}"', f'bin_dir = "{bindir}"'
    )
    config = tmp_path / "slow.toml"
    config.write_text(text)
    return config, mark


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _start_verifier(config: Path, mark: Path, backup_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebk", "--config", str(config), "verify", backup_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the verifier never reached pg_amcheck"
        time.sleep(0.1)
    return proc


def _postmaster(scratch: Path) -> int:
    (entry,) = list(scratch.iterdir())
    pid = int((entry / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
    assert _alive(pid)
    return pid


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_signal_leaves_no_server_and_no_scratch(
    source: VerifySource, tmp_path: Path, how: str, request: pytest.FixtureRequest
) -> None:
    config, mark = _slow_config(source, tmp_path)
    request.addfinalizer(lambda: shutil.rmtree(mark.parent, ignore_errors=True))
    bid = json.loads(source.env.run("backup", "--type", "physical", "--json").stdout)["backup_id"]
    proc = _start_verifier(config, mark, bid)
    postmaster = _postmaster(source.scratch)
    os.kill(proc.pid, getattr(signal, how))
    _, err = proc.communicate(timeout=120)
    if how == "SIGTERM":
        assert proc.returncode == 130, err
        assert "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
        assert _alive(postmaster)  # nobody could clean up ...
        source.env.run("verify", bid, "--level", "integrity")  # ... until the next run
    assert list(source.scratch.iterdir()) == []
    deadline = time.monotonic() + 30
    while _alive(postmaster) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(postmaster)


def test_sweep_touches_only_its_own_directories(source: VerifySource) -> None:
    """Look-alike names without a marker, or with a marker that is a symlink, stay."""
    plain = source.scratch / "ebk-verify-not-ours"
    plain.mkdir()
    (plain / "data").write_text("keep me")
    linked = source.scratch / "ebk-verify-linked"
    linked.mkdir()
    (linked / ".ebk-verify-owner").symlink_to(plain / "data")
    try:
        source.env.run("backup", "--type", "logical")
        source.env.run("verify", "latest", "--level", "integrity")
        assert (plain / "data").read_text() == "keep me"
        assert linked.exists()
    finally:
        shutil.rmtree(plain)
        shutil.rmtree(linked)
