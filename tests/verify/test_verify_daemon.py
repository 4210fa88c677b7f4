"""The daemon's verify job end to end: a scheduled run restores the newest unverified
backups, records them, and the verify metrics move; /readyz names a stale verification."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.support.daemon_process import DaemonProcess, daemon_section, job
from tests.support.ebkenv import make_env
from tests.support.net import free_port
from tests.support.postgres import make_postgres_dir
from tests.verify.conftest import VerifySource


@pytest.mark.slow
def test_scheduled_verify_records_and_metrics(source: VerifySource, tmp_path: Path) -> None:
    source.env.run("backup", "--type", "physical")
    source.env.run("backup", "--type", "logical")
    port = free_port()
    scratch = make_postgres_dir("ebk-verify-daemon-")
    root = tmp_path / "daemon"
    env = make_env(
        root,
        source.cluster,
        init=False,
        extra=f'\n[verify]\nscratch_dir = "{scratch}"\nmax_age = "1s"\n\n'
        + daemon_section(root, port, job("verify", interval=5)),
    )
    # The daemon's config points at the source's repository and key.
    text = env.config_path.read_text()
    text = text.replace(str(env.repo_dir), str(source.env.repo_dir)).replace(
        str(env.keyfile), str(source.env.keyfile)
    )
    env.config_path.write_text(text)
    d = DaemonProcess(env, port)
    try:
        d.wait_ready()
        assert d.metric("ebk_verify_failures_total", check="fingerprints") == 0
        assert d.metric("ebk_verify_last_success_timestamp_seconds") == 0
        assert d.metric("ebk_newest_verified_backup_age_seconds") is None
        d.wait_event("job succeeded", timeout=180)
        assert d.metric("ebk_verify_last_success_timestamp_seconds") > time.time() - 300
        age = d.metric("ebk_newest_verified_backup_age_seconds")
        assert age is not None and age > 0
        # verify.max_age = 1s: the newest verified backup is already "too old".
        status, body = d.get("/readyz")
        assert status == 503 and "restore verification" in body, body
        code, _ = d.stop()
        assert code == 0
    finally:
        d.close()
        shutil.rmtree(scratch, ignore_errors=True)
    listing = json.loads(source.env.run("list", "--json").stdout)
    newest = {b["kind"]: b for b in listing}
    for kind in ("physical", "logical"):
        verified = newest[kind]["verified"]
        assert verified is not None and verified["level"] == "restore", newest[kind]
