"""`ebk daemon` as a real process against a real PostgreSQL 15.

Scheduled backups, /metrics, sd_notify, SIGTERM mid-backup, SIGHUP reloads,
two daemons on one cluster, startup refusals and the catch-up of missed runs.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ebk.storage.local import LocalStorage
from tests.support.daemon_process import DaemonProcess, daemon_env, daemon_section, job
from tests.support.ebkenv import make_env
from tests.support.net import free_port
from tests.support.postgres import PgCluster
from tests.support.refusal import assert_refused


def _notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.extend(sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return out


def _backup_objects(repo: Path) -> list[str]:
    return sorted(o.name for o in LocalStorage(repo).list("backups/"))


def test_scheduled_backups_metrics_probes_and_sd_notify(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    env, port = daemon_env(
        tmp_path / "ebk",
        pg_cluster,
        job("physical", "*/2 * * * * *")
        + job("logical", name="dump", interval=2, databases=("postgres",)),
    )
    sock = _notify_socket(tmp_path / "notify.sock")
    d = DaemonProcess(
        env,
        port,
        extra_env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"},
    )
    try:
        d.wait_ready()
        assert d.get("/healthz") == (200, "ok\n")
        assert d.get("/nope")[0] == 404
        labels = {"job": "physical", "kind": "physical"}
        d.wait_event("job succeeded")
        first = {
            "ok": d.metric("ebk_job_runs_total", outcome="success", **labels),
            "at": d.metric("ebk_job_last_success_timestamp_seconds", **labels),
            "bytes": d.metric("ebk_job_bytes_total", **labels),
        }
        assert first["ok"] >= 1 and first["at"] > time.time() - 60 and first["bytes"] > 0
        # The figures move with the next backup.
        d.wait_for(
            lambda: d.metric("ebk_job_runs_total", outcome="success", **labels) > first["ok"],
            30,
            "a second successful backup",
        )
        assert d.metric("ebk_job_last_success_timestamp_seconds", **labels) > first["at"]
        assert d.metric("ebk_job_bytes_total", **labels) > first["bytes"]
        assert d.metric("ebk_job_last_bytes", **labels) > 0
        assert d.metric("ebk_job_last_duration_seconds", **labels) > 0
        assert d.metric("ebk_job_failures_total", **labels) == 0
        assert d.metric("ebk_job_next_run_timestamp_seconds", **labels) > time.time() - 1
        assert d.metric("ebk_daemon_ready") == 1
        code, took = d.stop()
        assert code == 0 and took < 10
    finally:
        d.close()
    messages = _drain(sock)
    sock.close()
    assert "READY=1" in messages and "WATCHDOG=1" in messages and "STOPPING=1" in messages
    lines = d.lines()
    assert not [line for line in lines if line.get("unparsed")], "every log line is JSON"
    succeeded = [line["backup_id"] for line in d.events("job succeeded")]
    listed = json.loads(env.run("list", "--json").stdout)
    assert {b["backup_id"] for b in listed} >= set(succeeded) and len(succeeded) >= 2
    assert {b["kind"] for b in listed} == {"physical", "logical"}
    assert all(b["databases"] == ["postgres"] for b in listed if b["kind"] == "logical")
    started = {line["backup_id"] for line in d.events("backup started")}
    assert started >= set(succeeded)  # backup ids are in the logs from the start
    assert LocalStorage(env.repo_dir).list_incomplete() == []


def test_sigterm_mid_backup_aborts_cleanly(tmp_path: Path, pg_cluster: PgCluster) -> None:
    # zstd level 19 makes a backup of even a small cluster take many seconds.
    env, port = daemon_env(
        tmp_path / "ebk",
        pg_cluster,
        job("physical", "* * * * * *"),
        extra="[backup]\ncompression_level = 19\n\n",
    )
    d = DaemonProcess(env, port)
    try:
        started = d.wait_event("backup started", timeout=60)[0]
        backup_id = started["backup_id"]
        storage = LocalStorage(env.repo_dir)
        d.wait_for(
            lambda: (
                any(u.name.endswith("base.tar.ebk") for u in storage.list_incomplete())
                and f"backups/{backup_id}/key.json" in _backup_objects(env.repo_dir)
            ),
            30,
            "the key object stored and base.tar.ebk in flight",
        )
        code, took = d.stop()
    finally:
        d.close()
    assert code == 0, d.log_path.read_text()[-3000:]
    assert took < 10, f"exit took {took:.1f}s"
    print(f"SIGTERM mid-backup: exit {code} after {took:.2f}s")
    interrupted = d.events("job interrupted; its partial work was cleaned up")
    assert interrupted and "cancelled" in interrupted[0]["error"]
    assert not d.events("backup complete")
    assert _backup_objects(env.repo_dir) == []  # nothing listed, no orphans
    assert storage.list_incomplete() == []
    assert json.loads(env.run("list", "--json").stdout) == []
    # The server side is cleaned up too: the temporary slot went with the connection.
    deadline = time.monotonic() + 10
    while pg_cluster.psql("SELECT count(*) FROM pg_replication_slots") != "0":
        assert time.monotonic() < deadline, "replication slot left behind"
        time.sleep(0.2)


def test_sighup_rejects_a_bad_config_and_applies_a_good_one(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    env, port = daemon_env(
        tmp_path / "ebk", pg_cluster, job("retention", "* * * * * *", name="prune")
    )
    good = env.config_path.read_text()
    sock = _notify_socket(tmp_path / "notify.sock")
    d = DaemonProcess(env, port, extra_env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    rejected = "config reload rejected; the daemon keeps running on the previous configuration"
    try:
        d.wait_ready()
        d.wait_event("job succeeded")
        env.config_path.write_text(good + "\n[daemon\n")  # not TOML
        d.signal(signal.SIGHUP)
        assert "not valid TOML" in d.wait_event(rejected)[0]["error"]
        env.config_path.write_text(good.replace('kind = "retention"', 'kind = "defragment"'))
        d.signal(signal.SIGHUP)
        assert "unknown kind 'defragment'" in d.wait_event(rejected, 2)[-1]["error"]
        assert d.proc.poll() is None and d.get("/readyz") == (200, "ok\n")
        assert d.metric("ebk_daemon_config_reloads_total", outcome="rejected") == 2
        # Still running on the old configuration: the old job keeps running.
        runs = len(d.events("job succeeded"))
        d.wait_for(lambda: len(d.events("job succeeded")) > runs + 1, 20, "more runs of prune")
        env.config_path.write_text(good.replace('name = "prune"', 'name = "prune2"'))
        d.signal(signal.SIGHUP)
        d.wait_event("configuration reloaded")
        d.wait_for(
            lambda: [e for e in d.events("job succeeded") if e["job"] == "prune2"],
            20,
            "a run of the reloaded job",
        )
        assert d.metric("ebk_daemon_config_reloads_total", outcome="applied") == 1
        assert (
            d.metric("ebk_job_runs_total", job="prune", kind="retention", outcome="success") is None
        )
        code, _ = d.stop()
        assert code == 0
    finally:
        d.close()
    messages = _drain(sock)
    sock.close()
    assert messages.count("RELOADING=1") == 3 and messages.count("READY=1") == 4


def test_two_daemons_never_back_up_one_cluster_at_once(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    daemons = []
    for name in ("a", "b"):
        env, port = daemon_env(
            tmp_path / name,
            pg_cluster,
            job("physical", "*/2 * * * * *"),
            extra="[backup]\ncompression_level = 9\n\n",
        )
        daemons.append(DaemonProcess(env, port))
    try:
        for d in daemons:
            d.wait_ready()

        def outcomes(d: DaemonProcess) -> int:
            return len(d.events("job succeeded")) + len(d.events("job skipped: lock busy"))

        for d in daemons:
            d.wait_for(lambda d=d: outcomes(d) >= 3, 60, "three scheduled runs")
        for d in daemons:
            assert d.stop()[0] == 0
    finally:
        for d in daemons:
            d.close()

    def ts(line: dict) -> datetime:
        return datetime.fromisoformat(line["timestamp"])

    intervals = []
    for d in daemons:
        ends = {e["backup_id"]: ts(e) for e in d.events("backup complete")}
        ends.update(
            {
                e["backup_id"]: ts(e)
                for e in d.events("backup failed; nothing was listed")
                if "backup_id" in e
            }
        )
        for start in d.events("backup started"):
            intervals.append(
                (ts(start), ends.get(start["backup_id"], datetime.max.replace(tzinfo=UTC)), d.pid)
            )
    intervals.sort()
    for (_s1, e1, p1), (s2, _e2, p2) in itertools.pairwise(intervals):
        assert e1 <= s2, f"backups by pids {p1} and {p2} overlapped"
    busy = [(d, e) for d in daemons for e in d.events("job skipped: lock busy")]
    assert busy, "the daemons never collided; the test proved nothing"
    for d, event in busy:
        other = next(o for o in daemons if o is not d)
        assert f"pid {other.pid}" in event["error"], event["error"]
    assert sum(len(d.events("backup complete")) for d in daemons) >= 2


def test_startup_checks_refuse_with_a_clear_message(tmp_path: Path, pg_cluster: PgCluster) -> None:
    port = free_port()
    ok = make_env(
        tmp_path / "ok",
        pg_cluster,
        extra=daemon_section(tmp_path / "ok", port, job("physical", "0 2 * * *")),
    )
    result = ok.subprocess("daemon", "--check")
    assert result.returncode == 0, result.stderr
    assert "ok  key provider round trip" in result.stdout and "would start" in result.stdout

    none = make_env(
        tmp_path / "none", pg_cluster, extra=daemon_section(tmp_path / "none", port, "")
    )
    result = none.subprocess("daemon")
    assert_refused(
        result, 2, mentions="ebk daemon not started: the configuration is invalid: no jobs"
    )

    kind = make_env(
        tmp_path / "kind",
        pg_cluster,
        extra=daemon_section(tmp_path / "kind", port, job("defragment", "0 2 * * *")),
    )
    result = kind.subprocess("daemon")
    assert_refused(result, 2, mentions="unknown kind 'defragment'")

    ok.keyfile.rename(ok.keyfile.with_suffix(".moved"))
    result = ok.subprocess("daemon")
    assert_refused(result, 3, mentions="key provider round trip check failed")
    ok.keyfile.with_suffix(".moved").rename(ok.keyfile)

    blocker = tmp_path / "blocker"
    blocker.write_text("")
    text = ok.config_path.read_text().replace(f"file://{ok.repo_dir}", f"file://{blocker}/repo")
    ok.config_path.write_text(text)
    result = ok.subprocess("daemon")
    assert_refused(result, 4, mentions="storage reachable check failed")

    strict = make_env(
        tmp_path / "strict",
        pg_cluster,
        extra='[preflight]\npolicy = "require"\n\n'
        + daemon_section(tmp_path / "strict", port, job("physical", "0 2 * * *")),
    )
    result = strict.subprocess("daemon")
    assert_refused(result, 6, mentions="preflight check failed")


def test_a_missed_run_runs_once_at_start(tmp_path: Path) -> None:
    jobs = (
        job("retention", "0 0 1 1 *", name="overdue")
        + job("retention", "0 0 1 1 *", name="recent")
        + job("retention", "0 0 1 1 *", name="fresh")
    )
    env, port = daemon_env(tmp_path / "ebk", None, jobs)
    now = datetime.now(UTC)
    state = tmp_path / "ebk" / "state"
    state.mkdir()
    long_ago = (now - timedelta(days=800)).isoformat()  # two missed New Years: one run
    recent = (now - timedelta(minutes=5)).isoformat()
    (state / "jobs.json").write_text(
        json.dumps(
            {
                "version": 1,
                "jobs": {
                    "overdue": {"since": long_ago, "last_run": long_ago},
                    "recent": {
                        "since": long_ago,
                        "last_run": recent,
                        "last_success": recent,
                        "last_outcome": "success",
                    },
                },
            }
        )
    )
    d = DaemonProcess(env, port)
    try:
        d.wait_ready()
        d.wait_event("job succeeded")
        assert (
            d.metric("ebk_job_last_success_timestamp_seconds", job="recent", kind="retention")
            == datetime.fromisoformat(recent).timestamp()
        )
        time.sleep(2)
        assert [e["job"] for e in d.events("job started")] == ["overdue"]
        assert d.stop()[0] == 0
    finally:
        d.close()
    saved = json.loads((state / "jobs.json").read_text())["jobs"]
    assert datetime.fromisoformat(saved["overdue"]["last_run"]) >= now
    assert saved["fresh"]["last_run"] == "" and saved["fresh"]["since"]
    again = DaemonProcess(env, port)  # a restart does not run it again
    try:
        again.wait_ready()
        time.sleep(2)
        assert again.events("job started") == []
        assert again.stop()[0] == 0
    finally:
        again.close()
