"""WAL streaming from a physical replication slot (wal.mode = "stream") on a real PostgreSQL 15.

The daemon runs as a real process (as root, like the test) and streams; no
pg_switch_wal() anywhere: the marked transactions reach the archive through
the streamed partial segments, which is the RPO of seconds the mode promises.
Restores replay through `ebk wal-fetch` (the stdlib client over the daemon's
socket, as tests/postgres/test_wal_pitr.py explains).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ebk.postgres.walstream import parse_lsn
from tests.postgres.test_wal_pitr import _client
from tests.support.daemon_process import DaemonProcess, daemon_env, job
from tests.support.ebkenv import EbkEnv
from tests.support.net import free_port
from tests.support.postgres import PgCluster, init_cluster, make_postgres_dir
from tests.support.refusal import assert_refused

SEGMENT = 16 * 1024 * 1024


@dataclass
class Stream:
    cluster: PgCluster
    env: EbkEnv
    port: int
    base: Path
    client_cmd: str
    daemon: DaemonProcess


def _start(env: EbkEnv, port: int, cluster: PgCluster) -> DaemonProcess:
    daemon = DaemonProcess(env, port)
    daemon.wait_ready()
    daemon.wait_for(
        lambda: cluster.psql("SELECT count(*) FROM pg_replication_slots WHERE active") == "1",
        30,
        "the streaming slot to be active",
    )
    return daemon


def _durable_end(env: EbkEnv) -> int:
    """The end (as an LSN byte position) of what the repository holds, by object names."""
    end = 0
    names = [f for _, _, files in os.walk(env.repo_dir / "wal") for f in files]  # races: ok
    for file in names:
        name = file.removesuffix(".ebk")
        if file.startswith("."):
            continue  # the local backend's uncommitted writes
        if len(name) == 24:
            end = max(end, (int(name[8:16], 16) * 256 + int(name[16:24], 16) + 1) * SEGMENT)
        elif name.endswith(".stream"):
            seg, offset = name[:24], int(name[25:33], 16)
            end = max(end, (int(seg[8:16], 16) * 256 + int(seg[16:24], 16)) * SEGMENT + offset)
    return end


def _partials(env: EbkEnv) -> list[Path]:
    return sorted((env.repo_dir / "wal" / "stream").glob("*/*.stream.ebk"))


def _slot_flush(cluster: PgCluster) -> int:
    value = cluster.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'ebk'")
    return parse_lsn(value) if value else 0


def _wait_durable(stream: Stream, lsn: int, timeout: float = 20) -> float:
    """Seconds until the slot (= what the daemon reported durable) passed ``lsn``."""
    start = time.monotonic()
    while True:
        flushed = _slot_flush(stream.cluster)
        # The slot never claims more than the repository holds.
        assert flushed <= _durable_end(stream.env)
        if flushed >= lsn:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"not durable within {timeout}s"
        time.sleep(0.1)


def _mark(cluster: PgCluster, note: str) -> int:
    cluster.psql(f"INSERT INTO marks VALUES ('{note}')")
    return parse_lsn(cluster.psql(f"SELECT pg_create_restore_point('{note}')"))


def _restore(stream: Stream, name: str) -> PgCluster:
    target = stream.base / f"restore-{name}"
    port = free_port()
    out = stream.env.run(
        "restore",
        "latest",
        "--to",
        str(target),
        "--owner",
        "postgres",
        "--target-name",
        name,
        "--restore-command",
        f"{stream.client_cmd} wal-fetch %f %p",
        "--start",
        "--port",
        str(port),
    ).stdout
    assert "replayed: recovery stopping" in out
    return PgCluster(target, port, stream.base, target / "ebk-restore.log")


@pytest.fixture(scope="module")
def stream() -> Iterator[Stream]:
    base = make_postgres_dir("ebk-walstream-")
    cluster = init_cluster(base)
    root = base / "ebk"
    env, port = daemon_env(
        root,
        cluster,
        job("physical", cron="0 3 1 1 *"),
        extra=f'[wal]\nmode = "stream"\nslot = "ebk"\nstream_flush_interval = "1s"\n'
        f'socket = "{root}/wal.sock"\nsocket_group = "postgres"\nprefetch = 1\n\n',
    )
    (root / "state").mkdir(exist_ok=True)
    root.chmod(0o755)
    client = _client(base, env.config_path)
    daemon = _start(env, port, cluster)
    state = Stream(cluster, env, port, base, client, daemon)
    try:
        cluster.psql("CREATE TABLE marks (note text); CREATE TABLE filler (v text)")
        env.run("backup", "--type", "physical", "--json")
        yield state
    finally:
        state.daemon.close()
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_marked_transaction_is_restorable_within_seconds(stream: Stream) -> None:
    stream.cluster.psql("INSERT INTO filler SELECT md5(g::text) FROM generate_series(1, 20000) g")
    lsn = _mark(stream.cluster, "rpo1")
    seconds = _wait_durable(stream, lsn)
    assert seconds < 10  # wal.stream_flush_interval = 1s: durable within a few seconds
    restored = _restore(stream, "rpo1")
    try:
        assert restored.psql("SELECT string_agg(note, ',') FROM marks") == "rpo1"
        assert restored.psql("SELECT count(*) FROM filler") == "20000"
    finally:
        restored.stop()
    status, body = stream.daemon.get("/metrics")
    assert status == 200
    assert "ebk_wal_stream_up 1.0" in body
    assert "ebk_wal_stream_partials_total" in body


def test_slot_advances_only_after_durability(stream: Stream) -> None:
    """Sampled while WAL flows: the slot's position (the flush ebk reported) never passes
    the end of what the repository holds (sampled after it: objects only grow)."""
    writer = threading.Thread(
        target=stream.cluster.psql,
        args=("INSERT INTO filler SELECT md5(g::text) FROM generate_series(1, 30000) g;" * 12,),
    )
    writer.start()
    advanced = 0
    last = _slot_flush(stream.cluster)
    until = time.monotonic() + 2
    while writer.is_alive() or time.monotonic() < until:
        flushed = _slot_flush(stream.cluster)
        assert flushed <= _durable_end(stream.env), "the slot was told WAL is flushed early"
        advanced += flushed > last
        last = flushed
        time.sleep(0.05)
    writer.join()
    assert advanced >= 2  # it did move while sampled
    assert stream.daemon.events("WAL streaming failed; retrying") == []


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing(stream: Stream) -> None:
    cluster = stream.cluster
    cluster.psql("INSERT INTO filler SELECT md5(g::text) FROM generate_series(1, 200000) g")
    os.kill(stream.daemon.pid, signal.SIGKILL)
    stream.daemon.proc.wait()
    cluster.psql("INSERT INTO filler SELECT md5(g::text) FROM generate_series(1, 100000) g")
    stream.daemon = _start(stream.env, stream.port, cluster)
    lsn = _mark(cluster, "after_kill")
    expected = cluster.psql("SELECT count(*) FROM filler")
    _wait_durable(stream, lsn)
    conflicts = [e for e in stream.daemon.lines() if "refusing" in json.dumps(e)]
    assert conflicts == []
    assert stream.daemon.events("WAL streaming failed; retrying") == []
    # The killed daemon's partials of segments now archived whole are gone (authenticated
    # first), and so are those superseded since the restart: at most the current segment's.
    stream.daemon.wait_for(
        lambda: len({p.name[:24] for p in _partials(stream.env)}) <= 1,
        20,
        "superseded partials to be deleted",
    )
    restored = _restore(stream, "after_kill")
    try:
        assert restored.psql("SELECT string_agg(note, ',' ORDER BY note) FROM marks") == (
            "after_kill,rpo1"
        )
        assert restored.psql("SELECT count(*) FROM filler") == expected
    finally:
        restored.stop()


def test_forged_partial_is_refused_by_wal_fetch(stream: Stream) -> None:
    tli = stream.env.repo_dir / "wal" / "stream" / "00000001"
    genuine = sorted(tli.glob("*.stream.ebk"))[-1]
    segment = "0000000100000000000000F0"  # far ahead: not archived
    forged = tli / f"{segment}.00010000.stream.ebk"
    forged.write_bytes(genuine.read_bytes())  # a genuine object under another name
    dest = stream.base / "fetched"
    try:
        result = stream.env.run("wal-fetch", segment, str(dest), expect=126)
        assert_refused(result, 126)
        assert "no streamed partial" in result.output
        assert not dest.exists()
    finally:
        forged.unlink()
    result = stream.env.run("wal-fetch", segment, str(dest), expect=1)
    assert not dest.exists()
    # The genuine partial's own segment (or, by now, the whole segment): a full-size file.
    stream.env.run("wal-fetch", genuine.name[:24], str(dest))
    assert dest.stat().st_size == SEGMENT


@pytest.mark.slow
def test_promotion_streams_the_old_timeline_then_the_new(stream: Stream) -> None:
    """The slot still holds timeline-1 WAL when the server is promoted (timeline 2): the
    daemon streams timeline 1 to its end, archives 00000002.history, follows timeline 2."""
    cluster = stream.cluster
    stream.daemon.close()  # kill -9: the slot keeps what it had not confirmed
    cluster.psql("INSERT INTO filler SELECT md5(g::text) FROM generate_series(1, 300000) g")
    cluster.psql("INSERT INTO marks VALUES ('tl1')")
    cluster.stop()
    signal_file = cluster.data_dir / "standby.signal"
    signal_file.touch()
    shutil.chown(signal_file, "postgres", "postgres")
    cluster.start()
    assert cluster.psql("SELECT pg_promote()") == "t"
    assert cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()") in ("1", "2")
    lsn = _mark(cluster, "tl2")
    expected = cluster.psql("SELECT count(*) FROM filler")
    stream.daemon = _start(stream.env, stream.port, cluster)
    _wait_durable(stream, lsn, timeout=30)
    assert (stream.env.repo_dir / "wal" / "00000002" / "00000002.history.ebk").exists()
    assert stream.daemon.events("timeline ended; following the next")
    restored = _restore(stream, "tl2")
    try:
        notes = restored.psql("SELECT string_agg(note, ',' ORDER BY note) FROM marks")
        assert {"tl1", "tl2"} <= set(notes.split(","))
        assert restored.psql("SELECT count(*) FROM filler") == expected
    finally:
        restored.stop()


@pytest.mark.slow
def test_retention_deletes_streamed_partials_below_the_kept_backup(
    stream: Stream, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stream.env
    old_partials = {p.name for p in _partials(env) if p.name.startswith("00000001")}
    assert old_partials  # timeline 1's last segment (the promotion test): never completed
    second = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    for key, value in {"KEEP_LAST": "1", "KEEP_DAILY": "0", "KEEP_WEEKLY": "0",
                       "KEEP_MONTHLY": "0", "MIN_AGE": "0"}.items():  # fmt: skip
        monkeypatch.setenv(f"EBK_RETENTION__{key}", value)
    out = json.loads(env.run("retention", "--json").stdout)
    assert len(out["deleted"]) == 1
    gone = {f"{n}.ebk" for n in out["wal_deleted"] if n.endswith(".stream")}
    assert old_partials <= gone
    cutoff = parse_lsn(second["start_lsn"]) // SEGMENT
    for path in _partials(env):
        assert int(path.name[8:16], 16) * 256 + int(path.name[16:24], 16) >= cutoff


@pytest.mark.slow
def test_stream_refuses_while_archive_command_pushes_too(stream: Stream) -> None:
    """Last in the module: it leaves the stream refusing."""
    cluster = stream.cluster
    cluster.psql("ALTER SYSTEM SET archive_mode = on")
    cluster.psql("ALTER SYSTEM SET archive_command = '/bin/false ebk wal-push %p'")
    cluster.stop()
    cluster.start()

    def refused() -> str:
        status, body = stream.daemon.get("/readyz")
        return body if status == 503 and "refusing to stream" in body else ""

    body = stream.daemon.wait_for(refused, 30, "/readyz to report the double archiving")
    assert "archive_command" in body
    assert "ebk_wal_stream_up 0.0" in stream.daemon.get("/metrics")[1]
