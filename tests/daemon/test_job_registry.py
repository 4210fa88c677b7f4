"""Job kinds are pluggable, and a job that ignores the cancel flag cannot hold shutdown.

The daemon runs as a real process from a small script that registers two extra
kinds the way later work (restore verification, key rotation) will.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.daemon_process import DaemonProcess, daemon_env, job

SCRIPT = """
import sys, time
from pathlib import Path
from ebk.daemon.jobs import JobKind, JobResult, default_registry
from ebk.daemon.service import Daemon

def custom(ctx):
    return JobResult(nbytes=42, detail="custom kind ran")

def stubborn(ctx):
    ctx.log.info("stubborn job ignoring cancel")
    while True:
        time.sleep(0.1)

registry = default_registry()
registry["custom"] = JobKind(custom, summary="a test kind")
registry["stubborn"] = JobKind(stubborn, summary="never looks at ctx.cancel")
sys.exit(Daemon(Path(sys.argv[1]), registry=registry).serve())
"""


def test_registered_kind_runs_and_a_stuck_job_is_abandoned(tmp_path: Path) -> None:
    env, port = daemon_env(
        tmp_path / "ebk",
        None,
        job("custom", interval=1) + job("stubborn", interval=3),
        shutdown_timeout=2,
    )
    d = DaemonProcess(env, port, argv=[sys.executable, "-c", SCRIPT, str(env.config_path)])
    try:
        d.wait_for(
            lambda: [e for e in d.events("job succeeded") if e["job"] == "custom"],
            30,
            "the custom job",
        )
        assert d.metric("ebk_job_last_bytes", job="custom", kind="custom") == 42
        d.wait_event("stubborn job ignoring cancel")
        code, took = d.stop()
    finally:
        d.close()
    assert code == 130, d.log_path.read_text()[-2000:]
    assert "Traceback" not in d.log_path.read_text()  # a clean exit, not a crash
    assert 2 <= took < 6, took
    stuck = d.events(
        "jobs did not stop in time; exiting anyway (`ebk repo check --clean` "
        "removes what they left)"
    )
    assert stuck and stuck[0]["jobs"] == ["stubborn"]
