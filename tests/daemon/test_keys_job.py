"""The daemon's `keys` job: rotates and re-wraps when the policy says so, and reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ebk.app.keylife import key_status
from ebk.daemon.keyjob import KeyPolicyState
from ebk.runtime import Runtime
from tests.keys.synthetic import add_backups
from tests.support.daemon_process import DaemonProcess, daemon_env, job
from tests.support.ebkenv import make_env


def age_key_file(path: Path, days: int) -> str:
    """Make the current KEK look ``days`` old (as if made then)."""
    doc = json.loads(path.read_text())
    when = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds")
    for key in doc["keys"]:
        key["created"] = when
    path.write_text(json.dumps(doc))
    return str(doc["primary"])


def test_overdue_rotation_is_a_readiness_reason(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None, extra='[preflight]\npolicy = "off"\n')
    add_backups(Runtime.load(env.config_path), 2)
    state = KeyPolicyState()
    state.update(key_status(Runtime.load(env.config_path)))
    assert state.not_ready_reason() == ""
    age_key_file(env.keyfile, 181)
    state.update(key_status(Runtime.load(env.config_path)))
    assert "KEK rotation overdue since" in state.not_ready_reason()
    assert env.run("keys", "status", expect=3).output.count("OVERDUE") == 1


def test_keys_job_rotates_when_due_and_exports_metrics(tmp_path: Path) -> None:
    env, port = daemon_env(
        tmp_path / "ebk", None, job("keys", interval=2), extra='[preflight]\npolicy = "off"\n'
    )
    add_backups(Runtime.load(env.config_path), 4)
    old = age_key_file(env.keyfile, 200)
    d = DaemonProcess(env, port)
    try:
        d.wait_for(lambda: d.events("job succeeded"), 60, "the keys job")
        new = json.loads(env.keyfile.read_text())["primary"]
        assert new != old
        assert d.metric("ebk_backups_by_kek_version", version=new) == 4
        assert d.metric("ebk_backups_by_kek_version", version=old) == 0
        age = d.metric("ebk_kek_age_seconds")
        assert age is not None and age < 600
        assert d.get("/readyz")[0] == 200
        kinds = [e["kind"] for e in json.loads(env.run("keys", "log", "--json").stdout)]
        assert kinds[:2] == ["rotate", "rewrap"]
    finally:
        d.stop()
        d.close()
