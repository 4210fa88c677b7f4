"""systemd/ebk-volume@.service: unlock before PostgreSQL/Docker, lock on stop, and a failed
unlock (KMS unreachable, wrong key) keeps them from starting: Requires via RequiredBy=,
ordering via Before=.  `systemd-analyze verify` checks an instance of a copy pointing at
this venv's ebk (no systemd runs as PID 1 here, so nothing starts the unit)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.needs import skip_or_fail

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ebk-volume@.service"


def _settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_orders_unlock_before_postgres_and_docker_and_is_required() -> None:
    s = _settings()
    assert s["Type"] == ["oneshot"] and s["RemainAfterExit"] == ["yes"]
    assert s["ExecStart"] == ["/usr/bin/ebk --config /etc/ebk/ebk.toml volume unlock %f"]
    assert s["ExecStop"] == ["/usr/bin/ebk --config /etc/ebk/ebk.toml volume lock %f"]
    before = s["Before"][0].split()
    assert "postgresql.service" in before and "docker.service" in before
    assert s["RequiredBy"] == ["postgresql.service docker.service"]
    assert "network-online.target" in s["After"][0] and s["RequiresMountsFor"] == ["%f"]
    assert s["NoNewPrivileges"] == ["yes"]


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        skip_or_fail("systemd-analyze is missing: install Debian's `systemd` package")
    ebk = Path(sys.executable).parent / "ebk"
    assert ebk.exists(), f"{ebk} is missing: pip install -e . into this venv"
    copy = tmp_path / "ebk-volume@srv-pg.service"
    copy.write_text(UNIT.read_text().replace("/usr/bin/ebk", str(ebk)))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "ebk-volume@" not in result.stderr, result.stderr  # no warning about the unit
