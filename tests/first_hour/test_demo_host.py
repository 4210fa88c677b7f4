"""scripts/demo.sh on a database host: a running Debian cluster stays untouched, and the
demo's own install step lists no Docker, qemu, nginx or kernel package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = re.compile(r"docker|qemu|nginx|linux-image|containerd|runc")


def test_demo_apt_list_has_only_postgres_and_venv() -> None:
    demo = subprocess.run(
        [str(REPO / "scripts" / "setup.sh"), "--demo", "--print-apt"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "postgresql-15" in demo and "postgresql-client-15" in demo
    assert not [p for p in demo if FORBIDDEN.search(p)], demo
    full = subprocess.run(
        [str(REPO / "scripts" / "setup.sh"), "--print-apt"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert set(demo) <= set(full) and "docker.io" in full  # the test setup installs the rest


@pytest.fixture
def debian_cluster() -> Iterator[tuple[str, int]]:
    """A Debian cluster (pg_createcluster) on a spare port, dropped afterwards."""
    if os.geteuid() != 0 or shutil.which("pg_createcluster") is None:
        pytest.skip("needs root and postgresql-common (pg_createcluster)")
    name, port = f"ebkdemo{os.getpid()}", free_port()
    subprocess.run(
        ["pg_createcluster", "15", name, "-p", str(port), "--start-conf", "auto"],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(["pg_ctlcluster", "15", name, "start"], check=True, capture_output=True)
        yield name, port
    finally:
        subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True)


def _postmaster_pid(name: str) -> int:
    return int(Path(f"/var/lib/postgresql/15/{name}/postmaster.pid").read_text().split()[0])


@pytest.mark.root
@pytest.mark.slow  # ~20 s: the whole demo at pgbench scale 1
def test_demo_runs_beside_a_running_cluster(debian_cluster: tuple[str, int]) -> None:
    name, port = debian_cluster
    start_conf = Path(f"/etc/postgresql/15/{name}/start.conf")
    pid_before, conf_before = _postmaster_pid(name), start_conf.read_text()

    env = dict(os.environ, EBK_DEMO_SCALE="1")
    demo = subprocess.run(
        [str(REPO / "scripts" / "demo.sh")], capture_output=True, text=True, env=env, timeout=600
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "OK: encrypted physical and logical backups restored" in demo.stdout
    assert f":{port}" not in demo.stdout  # the demo's cluster has a port of its own

    assert _postmaster_pid(name) == pid_before  # not stopped, not restarted
    assert start_conf.read_text() == conf_before  # not reconfigured
    status = subprocess.run(
        ["pg_lsclusters", "-h", "15", name], capture_output=True, text=True, check=True
    ).stdout.split()
    assert status[3] == "online", status
    installing = [line for line in demo.stderr.splitlines() if "apt: installing" in line]
    assert not [line for line in installing if FORBIDDEN.search(line)], installing
