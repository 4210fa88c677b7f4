"""The cluster backup lock (real PostgreSQL advisory lock) and the repository lease."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ebk.config import PostgresConfig
from ebk.errors import LockBusy, PostgresError
from ebk.postgres.advisory_lock import advisory_key, cluster_backup_lock
from ebk.repository.layout import LEASE_OBJECT
from ebk.repository.lease import RepositoryLease
from ebk.storage.local import LocalStorage
from tests.support.postgres import PgCluster


def test_advisory_key_is_fixed() -> None:
    # Changing it would let an old and a new ebk back up one cluster at once.
    assert advisory_key() == advisory_key("ebk-backup")
    assert advisory_key() == int.from_bytes(
        __import__("hashlib").sha256(b"ebk-backup").digest()[:8], "big", signed=True
    )


def test_cluster_lock_is_exclusive_and_names_its_holder(pg_cluster: PgCluster) -> None:
    cfg = PostgresConfig(host=pg_cluster.host, port=pg_cluster.port, user="postgres")
    with cluster_backup_lock(cfg):
        held = pg_cluster.psql(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
        assert held == "1"
        with pytest.raises(LockBusy) as busy, cluster_backup_lock(cfg):
            pass
        message = str(busy.value)
        assert busy.value.exit_code == 8
        assert f"pid {os.getpid()}" in message  # our application_name names host and pid
        assert "ebk-lock" in message and "from 127.0.0.1," in message
    # Released with the session: it can be taken again, and nothing is left in pg_locks.
    with cluster_backup_lock(cfg):
        pass
    assert pg_cluster.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"


def test_cluster_lock_reports_an_unreachable_server(pg_cluster: PgCluster) -> None:
    from tests.support.net import free_port

    cfg = PostgresConfig(host="127.0.0.1", port=free_port(), user="postgres")
    with pytest.raises(PostgresError, match="backup lock"), cluster_backup_lock(cfg):
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _lease(storage, clock: Clock, purpose: str = "test", sleeps: list | None = None):
    return RepositoryLease(
        storage,
        purpose=purpose,
        seconds=60,
        settle=0.5,
        clock=clock,
        sleep=(sleeps.append if sleeps is not None else lambda _s: None),
    )


def test_local_lease_is_atomic_and_expires(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    clock = Clock()
    sleeps: list[float] = []
    first = _lease(storage, clock, "retention", sleeps)
    first.acquire()
    assert sleeps == []  # create-if-absent is atomic: no settle delay needed
    doc = json.loads(storage.get_bytes(LEASE_OBJECT))
    assert doc["pid"] == os.getpid() and doc["purpose"] == "retention"
    assert doc["expires"] == clock.now + 60
    with pytest.raises(LockBusy, match=r"held by .* \(pid \d+, retention\)") as busy:
        _lease(storage, clock).acquire()
    assert busy.value.exit_code == 8
    assert storage.list_incomplete() == []  # no temp files left behind
    first.check()
    clock.now += 40  # past half-life: check() renews
    first.check()
    assert json.loads(storage.get_bytes(LEASE_OBJECT))["expires"] == clock.now + 60
    clock.now += 61  # the holder stalled: the lease expired and a second process takes over
    second = _lease(storage, clock, "repo check")
    second.acquire()
    with pytest.raises(LockBusy, match=r"lost to .*repo check"):
        first.check()
    first.release()  # not ours any more: must not delete the other's lease
    assert json.loads(storage.get_bytes(LEASE_OBJECT))["token"] == second.token
    second.release()
    assert not storage.exists(LEASE_OBJECT)
    assert [o.name for o in storage.list()] == []
    with _lease(storage, clock) as third:
        assert third.held
    assert not storage.exists(LEASE_OBJECT)


def test_racing_takeovers_of_a_stale_lease_leave_one_holder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    clock = Clock()
    dead = _lease(storage, clock, "dead")
    dead.acquire()
    clock.now += 61  # the holder died: its lease expired
    racer = _lease(storage, clock, "racer")

    def racing_sleep(_seconds: float) -> None:
        # While we settle, the racer (which also saw the stale lease) deletes ours and
        # creates its own: the later writer wins and we must back off.
        storage.delete(LEASE_OBJECT)
        storage.put_if_absent(LEASE_OBJECT, racer._record().to_json())

    loser = RepositoryLease(
        storage, purpose="loser", seconds=60, settle=0.5, clock=clock, sleep=racing_sleep
    )
    with pytest.raises(LockBusy, match="racer") as busy:
        loser.acquire()
    assert busy.value.exit_code == 8
    assert not loser.held
    assert json.loads(storage.get_bytes(LEASE_OBJECT))["purpose"] == "racer"

    storage.put_bytes(LEASE_OBJECT, b"not json")
    with pytest.raises(LockBusy, match="unreadable"):
        _lease(storage, clock).acquire()
