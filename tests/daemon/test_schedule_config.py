"""Job config parsing, cron triggers (crontab weekday numbering), state file, sd_notify."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ebk.config import JobConfig, load_config
from ebk.daemon.schedule import StateStore, build_trigger, next_after
from ebk.daemon.sdnotify import Notifier
from ebk.errors import ConfigError

WED = datetime(2024, 6, 12, 12, 0, tzinfo=UTC)  # a Wednesday


def _cfg(tmp_path: Path, text: str, environ: dict[str, str] | None = None):
    path = tmp_path / "ebk.toml"
    path.write_text(text)
    return load_config(path, environ=environ or {})


def test_jobs_are_tables_with_checked_keys(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        '[daemon]\nlisten = "[::1]:9187"\n'
        '[[daemon.jobs]]\nkind = "physical"\ncron = "0 2 * * *"\n'
        '[[daemon.jobs]]\nkind = "logical"\nname = "dumps"\ninterval_seconds = 60\n'
        'databases = ["app"]\n',
    )
    assert [(j.name, j.kind, j.cron, j.interval_seconds, j.databases) for j in cfg.daemon.jobs] == [
        ("physical", "physical", "0 2 * * *", 0, []),
        ("dumps", "logical", "", 60, ["app"]),
    ]
    cases = {
        '[[daemon.jobs]]\nkind = "physical"\ncron = "0 2 * * *"\nevery = 1\n': (
            "unknown key daemon.jobs\\[0\\].every"
        ),
        '[[daemon.jobs]]\ncron = "0 2 * * *"\n': "has no kind",
        '[[daemon.jobs]]\nkind = "physical"\n': "exactly one of cron and interval_seconds",
        '[[daemon.jobs]]\nkind = "physical"\ncron = "0 2 * * *"\ninterval_seconds = 5\n': (
            "exactly one of"
        ),
        '[[daemon.jobs]]\nkind = "physical"\ncron = "0 2 * * *"\n'
        '[[daemon.jobs]]\nkind = "physical"\ncron = "0 3 * * *"\n': "two daemon jobs are named",
        '[[daemon.jobs]]\nkind = "physical"\ncron = 5\n': "daemon.jobs\\[0\\].cron must be a str",
        '[daemon]\njobs = ["physical"]\n': "daemon.jobs\\[0\\] must be a table",
        '[daemon]\nlisten = "9187"\n': "is not HOST:PORT",
        '[daemon]\ntimezone = "Mars/Olympus"\n': "not a known time zone",
        '[retention]\nmin_age = "a while"\n': "not a duration",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            _cfg(tmp_path, text)
    with pytest.raises(ConfigError, match="must be a table"):
        _cfg(tmp_path, "", {"EBK_DAEMON__JOBS": "physical"})
    assert _cfg(tmp_path, "", {"EBK_DAEMON__LISTEN": "127.0.0.1:1"}).daemon.listen == "127.0.0.1:1"


def _job(cron: str = "", interval: int = 0) -> JobConfig:
    job = JobConfig(kind="physical", cron=cron, interval_seconds=interval)
    job.validate()
    return job


def test_cron_weekdays_follow_crontab_and_seconds_are_optional() -> None:
    sunday = _job("0 2 * * 0")
    assert next_after(build_trigger(sunday, "UTC"), sunday, WED) == datetime(
        2024, 6, 16, 2, 0, tzinfo=UTC
    )
    seven = _job("0 2 * * 7")
    assert next_after(build_trigger(seven, "UTC"), seven, WED).weekday() == 6
    weekdays = _job("30 1 * * 1-5")
    t = build_trigger(weekdays, "UTC")
    fires = [WED]
    for _ in range(5):
        fires.append(next_after(t, weekdays, fires[-1]))
    assert [f.strftime("%a") for f in fires[1:]] == ["Thu", "Fri", "Mon", "Tue", "Wed"]
    every5s = _job("*/5 * * * * *")
    assert next_after(build_trigger(every5s, "UTC"), every5s, WED) == WED + timedelta(seconds=5)
    berlin = _job("0 2 * * *")
    assert next_after(build_trigger(berlin, "Europe/Berlin"), berlin, WED) == datetime(
        2024, 6, 13, 0, 0, tzinfo=UTC
    )  # 02:00 CEST
    interval = _job(interval=90)
    assert next_after(build_trigger(interval, "UTC"), interval, WED) == WED + timedelta(seconds=90)
    for bad, message in (
        ("0 2 * *", "has 4 fields"),
        ("0 25 * * *", "not valid"),
        ("0 2 * * 8", "out of range"),
        ("0 2 * * x-y", "not valid"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_trigger(_job(bad), "UTC")


def test_state_store_survives_restarts(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    first = store.ensure("physical", WED)
    assert first.since == WED.isoformat() and first.reference() == WED
    assert store.ensure("physical", WED + timedelta(days=1)).since == WED.isoformat()
    store.record("physical", WED + timedelta(hours=1), WED + timedelta(hours=2), "success")
    store.record("physical", WED + timedelta(hours=3), WED + timedelta(hours=4), "failure")
    again = StateStore(tmp_path / "state").get("physical")
    assert again.reference() == WED + timedelta(hours=3)
    assert again.last_success == (WED + timedelta(hours=2)).isoformat()
    assert again.last_outcome == "failure"
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
    (tmp_path / "state" / "jobs.json").write_text("{garbage")
    assert StateStore(tmp_path / "state").get("physical").last_run == ""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="state_dir"):
        StateStore(blocker / "state")


def test_sd_notify_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        notifier = Notifier(
            {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
        )
        assert notifier.enabled and notifier.watchdog_interval == 2.0
        assert notifier.ready(status="running")
        assert sock.recv(4096) == b"READY=1\nSTATUS=running"
        assert notifier.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.reloading() and sock.recv(4096) == b"RELOADING=1"
        assert notifier.stopping() and sock.recv(4096) == b"STOPPING=1"
    abstract = f"ebk-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + abstract)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + abstract}).ready()
        assert sock.recv(4096) == b"READY=1"
    off = Notifier({})
    assert not off.enabled and not off.ready() and off.watchdog_interval is None
    other = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is meant for another process
