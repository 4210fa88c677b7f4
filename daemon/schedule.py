"""When jobs run: cron/interval triggers, and the last run of each job on disk.

The state file lets a run missed while the daemon was down run once at start
(never a burst: one catch-up run per job, however many were missed).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ebk.config import JobConfig
from ebk.errors import ConfigError

_CRON_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]
STATE_FILE = "jobs.json"


def _crontab_day_of_week(field: str, where: str) -> str:
    """crontab numbers days 0-7 from Sunday; APScheduler 3 numbers them from Monday.

    Numeric items, ranges and steps are expanded to day names so "0 2 * * 0"
    means Sunday as every crontab(5) reader expects; names pass through.
    """
    if field in ("*", "?"):
        return "*"
    names: list[str] = []
    for item in field.split(","):
        body, _, step_text = item.partition("/")
        if body.isalpha():
            if step_text:
                raise ConfigError(f"{where}: a step needs a numeric day range, not {item!r}")
            names.append(body.lower())
            continue
        start_text, dash, end_text = body.partition("-")
        try:
            if body == "*":
                start, end = 0, 6
            else:
                start = int(start_text)
                end = int(end_text) if dash else (6 if step_text else start)
            step = int(step_text) if step_text else 1
        except ValueError:
            raise ConfigError(
                f"{where}: day of week {item!r} is not valid",
                hint="use 0-7 (0 and 7 are Sunday), names like mon-fri, or *",
            ) from None
        if not (0 <= start <= 7 and 0 <= end <= 7 and start <= end and step >= 1):
            raise ConfigError(
                f"{where}: day of week {item!r} is out of range",
                hint="use 0-7 (0 and 7 are Sunday)",
            )
        names.extend(_CRON_DAYS[d] for d in range(start, end + 1, step))
    return ",".join(dict.fromkeys(names))


def build_trigger(job: JobConfig, timezone: str) -> BaseTrigger:
    """A trigger from ``cron`` (5 fields, or 6 with seconds first) or ``interval_seconds``."""
    tz = ZoneInfo(timezone)
    where = f"daemon job {job.name!r}"
    if job.interval_seconds > 0:
        return IntervalTrigger(seconds=job.interval_seconds, timezone=tz)
    fields = job.cron.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ConfigError(
            f"{where}: cron = {job.cron!r} has {len(job.cron.split())} fields",
            hint='use 5 fields "minute hour day month weekday" (e.g. "0 2 * * *"), or 6 with '
            'seconds first (e.g. "*/30 * * * * *")',
        )
    second, minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_crontab_day_of_week(weekday, where),
            timezone=tz,
        )
    except ValueError as exc:
        raise ConfigError(
            f"{where}: cron = {job.cron!r} is not valid: {exc}",
            hint='e.g. "0 2 * * *" is daily at 02:00',
        ) from None


def next_after(trigger: BaseTrigger, job: JobConfig, moment: datetime) -> datetime | None:
    """The first scheduled time strictly after ``moment``."""
    if job.interval_seconds > 0:
        return moment + timedelta(seconds=job.interval_seconds)
    nxt: datetime | None = trigger.get_next_fire_time(None, moment + timedelta(microseconds=1))
    return nxt


@dataclass
class JobState:
    since: str = ""  # when the daemon first scheduled the job (the reference before any run)
    last_run: str = ""  # start of the last run that finished (any outcome but interrupted)
    last_success: str = ""  # end of the last successful run
    last_outcome: str = ""

    def reference(self) -> datetime | None:
        text = self.last_run or self.since
        return datetime.fromisoformat(text) if text else None


def probe_state_dir(directory: Path) -> None:
    """What StateStore() would refuse, found without writing (for `ebk daemon --check`)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == directory and not directory.is_dir():
        raise ConfigError(
            f"daemon.state_dir {directory} is not a directory",
            hint="remove it or change daemon.state_dir",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == directory else f"cannot be created: {existing}"
        raise ConfigError(
            f"daemon.state_dir {directory} {what} not writable by this user",
            hint="create it writable for the ebk user (the systemd unit's StateDirectory= "
            "does that), or change daemon.state_dir",
        )


class StateStore:
    """``<state_dir>/jobs.json``, rewritten atomically (temp file, fsync, rename)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self._lock = threading.Lock()
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"daemon.state_dir {directory} cannot be created: {exc.strerror}",
                hint="create it writable for the ebk user, or change daemon.state_dir",
            ) from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(
                f"daemon.state_dir {directory} is not writable by this user",
                hint="fix its ownership (the systemd unit's StateDirectory= "
                "does that), or change daemon.state_dir",
            )
        self._jobs = self._load()

    def _load(self) -> dict[str, JobState]:
        try:
            doc = json.loads(self.path.read_text())
            return {name: JobState(**values) for name, values in doc.get("jobs", {}).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, AttributeError):
            # A damaged state file only costs catch-up runs; start afresh rather than refuse.
            return {}

    def get(self, name: str) -> JobState:
        with self._lock:
            state = self._jobs.get(name, JobState())
            return JobState(**vars(state))

    def ensure(self, name: str, now: datetime) -> JobState:
        """The job's state, created with ``since=now`` the first time it is scheduled."""
        with self._lock:
            if name not in self._jobs:
                self._jobs[name] = JobState(since=now.isoformat())
                self._save()
            return JobState(**vars(self._jobs[name]))

    def record(self, name: str, started: datetime, finished: datetime, outcome: str) -> None:
        with self._lock:
            state = self._jobs.setdefault(name, JobState(since=started.isoformat()))
            state.last_run = started.isoformat()
            state.last_outcome = outcome
            if outcome == "success":
                state.last_success = finished.isoformat()
            self._save()

    def _save(self) -> None:
        doc = {"version": 1, "jobs": {name: vars(state) for name, state in self._jobs.items()}}
        fd, tmp = tempfile.mkstemp(prefix=".jobs-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def utcnow() -> datetime:
    return datetime.now(UTC)
