"""Continuous WAL archiving and point-in-time recovery on a real PostgreSQL 15.

PostgreSQL runs archive_command and restore_command as `postgres`; the ebk
daemon runs as root (like the test) and lets `postgres` in through its socket
(wal.socket_group).  The commands PostgreSQL runs are ebk's standard-library
client (ebk.walclient), copied where `postgres` can read it, started with
Debian's python3: the test venv's interpreter lives where `postgres` cannot go.

One module-scoped history: a base backup, then transaction A, a restore
point, transaction B (known times, xids and LSNs), all archived.  Every PITR
test restores to a point between A and B: A present, B absent.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon_process import DaemonProcess, daemon_env, job
from tests.support.ebkenv import EbkEnv
from tests.support.net import free_port
from tests.support.postgres import (
    REPO,
    PgCluster,
    give_to_postgres,
    init_cluster,
    make_postgres_dir,
    start_existing,
)
from tests.support.refusal import assert_refused

CLIENT_FILES = ("__init__.py", "__main__.py", "entry.py", "walclient.py")


@dataclass
class History:
    cluster: PgCluster
    env: EbkEnv
    daemon: DaemonProcess
    http_port: int
    base: Path
    client_cmd: str
    backup_id: str
    xid_a: str
    lsn_a: str
    time_mid: str


def _client(base: Path, config: Path) -> str:
    """`ebk` as PostgreSQL's user can run it: the stdlib-only client (fast path)."""
    pkg = base / "client" / "ebk"
    pkg.mkdir(parents=True)
    for name in CLIENT_FILES:
        shutil.copy(REPO / "ebk" / name, pkg / name)
    for path in (base / "client", pkg, *pkg.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return f"PYTHONPATH={base / 'client'} /usr/bin/python3 -m ebk --config {config}"


def _start_daemon(env: EbkEnv, port: int) -> DaemonProcess:
    daemon = DaemonProcess(env, port)
    daemon.wait_ready()
    daemon.wait_for(lambda: (env.root / "wal.sock").exists(), 10, "the wal socket")
    return daemon


def _wait_archived(env: EbkEnv, name: str, timeout: float = 60) -> None:
    path = env.repo_dir / "wal" / name[:8] / f"{name}.ebk"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{name} was not archived within {timeout}s"
        time.sleep(0.2)


def _switch(cluster: PgCluster) -> str:
    return cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    base = make_postgres_dir("ebk-wal-")
    cluster = init_cluster(base)
    root = base / "ebk"
    env, http_port = daemon_env(
        root,
        cluster,
        job("physical", cron="0 3 1 1 *"),  # the daemon needs a job; this one never runs here
        extra=f'[wal]\nsocket = "{root}/wal.sock"\nsocket_group = "postgres"\nprefetch = 2\n'
        "max_slot_retained_bytes = 16777216\n\n",
    )
    (root / "state").mkdir(exist_ok=True)
    root.chmod(0o755)  # postgres reaches the socket and the config (no secrets in it)
    client = _client(base, env.config_path)
    daemon = _start_daemon(env, http_port)
    try:
        with open(cluster.data_dir / "postgresql.conf", "a") as conf:
            conf.write(f"archive_mode = on\narchive_command = '{client} wal-push %p'\n")
        cluster.stop()
        cluster.start()
        cluster.psql(
            "CREATE TABLE marks (id int PRIMARY KEY, note text);"
            "CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS v "
            "FROM generate_series(1, 20000) g"
        )
        out = env.run("backup", "--type", "physical", "--json")
        manifest = json.loads(out.stdout)
        cluster.psql("INSERT INTO filler SELECT g, 'after' FROM generate_series(1, 5000) g")
        xid_a = cluster.psql(
            "BEGIN; INSERT INTO marks VALUES (1, 'A'); SELECT txid_current(); COMMIT;"
        )
        lsn_a = cluster.psql("SELECT pg_current_wal_lsn()")
        time.sleep(1.2)
        time_mid = cluster.psql("SELECT now()")
        cluster.psql("SELECT pg_create_restore_point('between_a_and_b')")
        time.sleep(1.2)
        cluster.psql("INSERT INTO marks VALUES (2, 'B')")
        last = _switch(cluster)
        _wait_archived(env, last)
        yield History(
            cluster,
            env,
            daemon,
            http_port,
            base,
            client,
            manifest["backup_id"],
            xid_a,
            lsn_a,
            time_mid,
        )
    finally:
        daemon.close()
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def _marks(cluster: PgCluster) -> list[str]:
    return cluster.psql("SELECT string_agg(note, ',' ORDER BY id) FROM marks").split(",")


@pytest.mark.parametrize("kind", ["time", "lsn", "xid", "name"])
def test_pitr_between_two_transactions(history: History, kind: str) -> None:
    value = {
        "time": history.time_mid,
        "lsn": history.lsn_a,
        "xid": history.xid_a,
        "name": "between_a_and_b",
    }[kind]
    target = history.base / f"pitr-{kind}"
    port = free_port()
    out = history.env.run(
        "restore",
        "latest",
        "--to",
        str(target),
        "--owner",
        "postgres",
        f"--target-{kind}",
        value,
        "--restore-command",
        f"{history.client_cmd} wal-fetch %f %p",
        "--start",
        "--port",
        str(port),
    ).stdout
    assert f"restored backup {history.backup_id}" in out
    assert "archive_mode = off" in out
    assert "replayed: recovery stopping" in out
    restored = PgCluster(target, port, history.base, target / "ebk-restore.log")
    try:
        assert _marks(restored) == ["A"]
        assert restored.psql("SELECT pg_is_in_recovery()") == "f"
        assert restored.psql("SHOW archive_mode") == "off"
    finally:
        restored.stop()
        shutil.rmtree(target, ignore_errors=True)


def test_pitr_target_before_every_backup_is_refused(history: History) -> None:
    result = history.env.run(
        "restore",
        "latest",
        "--to",
        str(history.base / "too-early"),
        "--target-time",
        "2000-01-01 00:00:00+00",
        expect=9,
    )
    assert "no complete physical backup ended before" in result.output
    assert not (history.base / "too-early").exists()


def test_wal_check_reports_continuity_then_a_gap(history: History) -> None:
    env = history.env
    report = json.loads(env.run("wal", "check", "--switch", "--json").stdout)
    assert report["ok"] and report["checked"] >= 2 and report["gaps"] == []
    victim = report["from"]
    path = env.repo_dir / "wal" / victim[:8] / f"{victim}.ebk"
    saved = path.read_bytes()
    path.unlink()
    try:
        result = env.run("wal", "check", "--json", expect=5)
        assert json.loads(result.stdout)["gaps"] == [victim]
    finally:
        path.write_bytes(saved)


def test_identical_push_is_idempotent_and_a_different_one_is_refused(
    history: History, tmp_path: Path
) -> None:
    env = history.env
    name = json.loads(env.run("wal", "check", "--json").stdout)["from"]
    copy = tmp_path / name
    env.run("wal-fetch", name, str(copy))
    env.run("wal-push", "--direct", str(copy))  # the same bytes again: success
    data = bytearray(copy.read_bytes())
    data[100] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert_refused(env.run("wal-push", "--direct", str(copy), expect=None), 5, mentions="different")
    env.run("wal", "check")  # nothing was overwritten


def test_swapped_or_forged_segment_is_refused_by_wal_fetch(
    history: History, tmp_path: Path
) -> None:
    env = history.env
    names = sorted(p.name for p in (env.repo_dir / "wal" / "00000001").glob("0*.ebk"))
    segments = [n.removesuffix(".ebk") for n in names if len(n) == 24 + 4]
    first, second = segments[0], segments[1]
    folder = env.repo_dir / "wal" / "00000001"
    saved = (folder / f"{second}.ebk").read_bytes()
    try:
        shutil.copy(folder / f"{first}.ebk", folder / f"{second}.ebk")  # renamed object
        dest = tmp_path / "RECOVERYXLOG"
        result = env.run("wal-fetch", "--prefetch", "0", second, str(dest), expect=None)
        assert_refused(result, 126, mentions="authentication")
        assert not dest.exists()
        forged = bytearray(saved)
        forged[-40] ^= 0x01  # one flipped bit in the last chunk
        (folder / f"{second}.ebk").write_bytes(bytes(forged))
        result = env.run("wal-fetch", "--prefetch", "0", second, str(dest), expect=None)
        assert_refused(result, 126)
        assert not dest.exists()
    finally:
        (folder / f"{second}.ebk").write_bytes(saved)
    assert (
        env.run(
            "wal-fetch", "--prefetch", "0", "0000000100000099000000FF", str(dest), expect=None
        ).exit_code
        == 1
    )


def test_the_daemon_never_reads_a_file_for_its_client_that_the_client_cannot(
    history: History,
) -> None:
    """The daemon runs as root; PostgreSQL's user hands over an open descriptor, so a
    segment-named symlink to a root-only file gets nothing archived."""
    secret = history.base / "root-only"
    secret.write_text("not for postgres\n")
    secret.chmod(0o600)
    trap = history.base / "trap"
    trap.mkdir()
    give_to_postgres(trap)
    name = "0000000100000000000000EE"
    (trap / name).symlink_to(secret)
    proc = subprocess.run(
        ["runuser", "-u", "postgres", "--", "sh", "-c",
         f"{history.client_cmd} wal-push {trap / name}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert_refused(proc, 2, mentions="cannot open")
    assert not (history.env.repo_dir / "wal" / "00000001" / f"{name}.ebk").exists()


def test_metrics_and_a_slot_holding_back_wal_turns_readyz_red(history: History) -> None:
    daemon, cluster = history.daemon, history.cluster
    assert (daemon.metric("ebk_wal_pushed_total") or 0) >= 3
    assert daemon.metric("ebk_wal_push_failures_total") == 0
    cluster.psql("SELECT pg_create_physical_replication_slot('stuck', true)")
    try:
        for _ in range(2):
            cluster.psql("INSERT INTO filler SELECT g, 'slot' FROM generate_series(1, 60000) g")
            _switch(cluster)
        status, body = daemon.get("/readyz")
        assert status == 503 and "replication slot stuck" in body
        held = daemon.metric("ebk_wal_slot_retained_bytes", slot="stuck", active="0")
        assert held is not None and held > 16 * 1024 * 1024
    finally:
        cluster.psql("SELECT pg_drop_replication_slot('stuck')")
    assert daemon.get("/readyz")[0] == 200


@pytest.mark.slow
def test_kill_9_mid_push_loses_nothing(history: History) -> None:
    cluster, env = history.cluster, history.env
    for i in range(4):
        cluster.psql(f"INSERT INTO filler SELECT g, 'k{i}' FROM generate_series(1, 20000) g")
        _switch(cluster)
    history.daemon.proc.send_signal(signal.SIGKILL)  # while PostgreSQL is archiving
    history.daemon.proc.wait(timeout=10)
    cluster.psql("INSERT INTO marks VALUES (3, 'C')")
    last = _switch(cluster)
    time.sleep(1.5)  # PostgreSQL's archive_command fails meanwhile (no daemon) and retries
    history.daemon = _start_daemon(env, history.http_port)
    _wait_archived(env, last, timeout=120)
    failed = cluster.psql("SELECT failed_count FROM pg_stat_archiver")
    report = json.loads(env.run("wal", "check", "--json").stdout)
    assert report["ok"], report
    assert int(failed) >= 1  # the kill was seen by PostgreSQL, which retried


@pytest.mark.slow
def test_promotion_to_timeline_2_and_pitr_across_it(history: History) -> None:
    """A restored copy is promoted (timeline 2) and archives as the new primary;
    PITR from the timeline-1 base backup follows 00000002.history to it."""
    env = history.env
    copy_dir = history.base / "tl2"
    port = free_port()
    env.run(
        "restore", "latest", "--to", str(copy_dir), "--owner", "postgres",
        "--target-name", "between_a_and_b",
        "--restore-command", f"{history.client_cmd} wal-fetch %f %p",
        "--start", "--port", str(port),
    )  # fmt: skip
    primary = PgCluster(copy_dir, port, history.base, copy_dir / "ebk-restore.log")
    try:
        assert primary.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"
        primary.psql("ALTER SYSTEM SET archive_mode = on")
        primary.psql(f"ALTER SYSTEM SET archive_command = '{history.client_cmd} wal-push %p'")
        primary.stop()
        # Archiving was off at the promotion: the operator archives the new history file.
        env.run("wal-push", "--direct", str(copy_dir / "pg_wal" / "00000002.history"))
        primary = start_existing(copy_dir, port=port)
        primary.psql("INSERT INTO marks VALUES (4, 'D on timeline 2')")
        time.sleep(1.2)
        after_d = primary.psql("SELECT now()")
        time.sleep(1.2)
        primary.psql("INSERT INTO marks VALUES (5, 'E after the target')")
        last = _switch(primary)
        _wait_archived(env, last)
        _wait_archived(env, "00000002.history")
    finally:
        primary.stop()
    target = history.base / "pitr-tl2"
    port2 = free_port()
    env.run(
        "restore", "latest", "--to", str(target), "--owner", "postgres",
        "--target-time", after_d,
        "--restore-command", f"{history.client_cmd} wal-fetch %f %p",
        "--start", "--port", str(port2),
    )  # fmt: skip
    restored = PgCluster(target, port2, history.base, target / "ebk-restore.log")
    try:
        assert _marks(restored) == ["A", "D on timeline 2"]  # B was on timeline 1's future
    finally:
        restored.stop()
        give_to_postgres(target)


def test_retention_keeps_exactly_the_wal_kept_backups_need(
    history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs last: it deletes the module's first backup."""
    env, cluster = history.env, history.cluster
    histories = sorted((env.repo_dir / "wal").glob("*/*.history.ebk"))
    second = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    _wait_archived(env, _switch(cluster))
    for key, value in {"KEEP_LAST": "1", "KEEP_DAILY": "0", "KEEP_WEEKLY": "0",
                       "KEEP_MONTHLY": "0", "MIN_AGE": "0"}.items():  # fmt: skip
        monkeypatch.setenv(f"EBK_RETENTION__{key}", value)
    out = json.loads(env.run("retention", "--json").stdout)
    assert out["deleted"] == [history.backup_id]
    start = second["start_lsn"]
    hi, lo = (int(x, 16) for x in start.split("/"))
    first_needed = f"00000001{hi:08X}{lo // (16 * 1024 * 1024):08X}"
    # Every timeline's files below the kept backup's start go (timeline 2 branched earlier).
    assert out["wal_deleted"] and all(n[8:24] < first_needed[8:] for n in out["wal_deleted"])
    left = sorted(p.name for p in (env.repo_dir / "wal" / "00000001").iterdir())
    assert left[0].startswith(first_needed)
    assert all(h.exists() for h in histories)  # timeline history is always kept
    report = json.loads(env.run("wal", "check", "--json").stdout)
    assert report["ok"] and report["from"] == first_needed
