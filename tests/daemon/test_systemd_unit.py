"""systemd/ebk.service: `systemd-analyze verify` passes and the exposure is <= 2.0.

The unit's ExecStart names /usr/bin/ebk (a packaged install); verify requires
the binary to exist, so the test checks a copy pointing at this venv's ebk.
Nothing here runs the unit: the machine has no systemd as PID 1 (the notify
protocol itself is tested against a real datagram socket elsewhere).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.needs import skip_or_fail

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ebk.service"
MAX_EXPOSURE = 2.0


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        skip_or_fail("systemd-analyze is missing: install Debian's `systemd` package")
    return path


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    ebk = Path(sys.executable).parent / "ebk"
    assert ebk.exists(), f"{ebk} is missing: pip install -e . into this venv"
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/ebk --config /etc/ebk/ebk.toml daemon" in text
    copy = tmp_path / "ebk.service"
    copy.write_text(text.replace("ExecStart=/usr/bin/ebk", f"ExecStart={ebk}"))
    return copy


def test_unit_declares_notify_watchdog_user_and_hardening() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    expected = {
        "Type": "notify",
        "User": "ebk",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "ProtectHome": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "RestrictNamespaces": "yes",
        "ReadWritePaths": "/var/lib/ebk",
        "KillMode": "mixed",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], f"{key}: {settings.get(key)}"
    assert "@system-service" in settings["SystemCallFilter"]
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    # Stop must outlast the daemon's own bounded shutdown (10 s by default).
    assert int(settings["TimeoutStopSec"][0]) > 10
    assert int(settings["WatchdogSec"][0]) >= 10


def test_systemd_analyze_verify_passes(unit_copy: Path) -> None:
    result = subprocess.run(
        [_analyze(), "verify", str(unit_copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # not even a warning


def test_systemd_analyze_security_exposure(unit_copy: Path) -> None:
    result = subprocess.run(
        [_analyze(), "security", "--offline=yes", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for ebk\.service: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout
