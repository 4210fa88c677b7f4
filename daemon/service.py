"""`ebk daemon`: scheduled jobs until SIGTERM, with health endpoints and sd_notify.

Threads: the main thread handles signals, reloads and the systemd watchdog;
APScheduler's thread fires triggers; one worker thread runs jobs one at a time
(backups of a cluster are exclusive anyway, and a queue keeps a long backup
from being overlapped by the next one); the HTTP server has its own threads.

Shutdown (SIGTERM/SIGINT): stop scheduling, set the cancel flag (a running
backup raises Interrupted at its next chunk, aborts its upload and deletes what
it wrote), wait up to daemon.shutdown_timeout_seconds, exit 0.  A job that does
not stop in time is abandoned: the process exits 130 and `ebk repo check
--clean` removes what it left.  SIGHUP reloads the config; an invalid one is
logged and the running one kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from ebk.config import Config, JobConfig, PostgresConfig, load_config
from ebk.daemon.dbstats import DatabaseCollector
from ebk.daemon.http import StatusServer
from ebk.daemon.jobs import JobContext, JobResult, Registry, default_registry
from ebk.daemon.keyjob import KeyPolicyState, key_job_kind
from ebk.daemon.metrics import DaemonMetrics
from ebk.daemon.schedule import (
    StateStore,
    build_trigger,
    next_after,
    probe_state_dir,
    utcnow,
)
from ebk.daemon.sdnotify import Notifier
from ebk.daemon.verify_job import VerifyMonitor
from ebk.daemon.walsocket import WalArchiver, start_wal_archiver
from ebk.errors import ConfigError, EbkError, Interrupted, LockBusy
from ebk.logsetup import configure_logging
from ebk.preflight.gate import enforce
from ebk.runtime import Runtime

log = structlog.get_logger("ebk.daemon")
POLL_SECONDS = 0.2


class _ToStructlog(logging.Handler):
    """APScheduler logs through stdlib logging; keep the stream one JSON object per line."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        getattr(structlog.get_logger(record.name), level, structlog.get_logger().warning)(
            record.getMessage()
        )


def _route_apscheduler_logs() -> None:
    logger = logging.getLogger("apscheduler")
    if not any(isinstance(h, _ToStructlog) for h in logger.handlers):
        logger.addHandler(_ToStructlog())
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _prefixed(exc: EbkError, what: str) -> EbkError:
    """The same error class (so the same exit code), saying which startup check failed."""
    try:
        wrapped = type(exc)(f"{what}: {exc.message}", hint=exc.hint)
    except TypeError:
        return exc
    return wrapped


class Daemon:
    def __init__(self, config_path: Path | None, *, registry: Registry | None = None) -> None:
        self.config_path = config_path
        self.registry = registry if registry is not None else default_registry()
        self.notifier = Notifier()
        self.cancel = threading.Event()
        self.runtime: Runtime | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.state: StateStore | None = None
        self.http: StatusServer | None = None
        self.wal: WalArchiver | None = None  # the wal-push socket (issue 13)
        self.metrics = DaemonMetrics(self._next_runs)
        self.metrics.registry.register(DatabaseCollector(self._postgres, self._backup_running))
        self.key_policy = KeyPolicyState()  # the `keys` job's last status (daemon/keyjob.py)
        self.metrics.registry.register(self.key_policy)
        self.registry.setdefault("keys", key_job_kind(self.key_policy))
        self.verify = VerifyMonitor(self.metrics.registry)  # the `verify` kind (issue 11)
        self.registry.setdefault("verify", self.verify.job_kind())
        self._not_ready = "starting"
        self._stop_signal: int | None = None
        self._reload_requested = False
        self._running: dict[str, threading.Thread] = {}
        self._running_lock = threading.Lock()
        self._triggers: dict[str, BaseTrigger] = {}
        self.warnings: list[tuple[str, str]] = []  # from the last check(): preflight under 'warn'

    # -- configuration and checks -------------------------------------------------------

    def _load(self) -> Runtime:
        config = load_config(self.config_path)
        self._validate_jobs(config)
        return Runtime(config)

    def _validate_jobs(self, config: Config) -> dict[str, BaseTrigger]:
        jobs = config.daemon.jobs
        if not jobs:
            raise ConfigError(
                f"no jobs are configured in {config.source}: the daemon would do nothing",
                hint='add a [[daemon.jobs]] table, e.g. kind = "physical" and cron = "0 2 * * *"',
            )
        triggers = {}
        for job in jobs:
            kind = self.registry.get(job.kind)
            if kind is None:
                raise ConfigError(
                    f"daemon job {job.name!r}: unknown kind {job.kind!r}",
                    hint=f"use one of: {', '.join(sorted(self.registry))}",
                )
            if kind.validate is not None:
                kind.validate(job, config)
            triggers[job.name] = build_trigger(job, config.daemon.timezone)
        return triggers

    def load(self) -> Runtime:
        """The config, validated with its jobs; logging configured from it."""
        try:
            runtime = self._load()
        except EbkError as exc:
            raise _prefixed(exc, "ebk daemon not started: the configuration is invalid") from None
        configure_logging(runtime.config.log.level, runtime.config.log.format)
        return runtime

    def check(
        self, runtime: Runtime, *, refusal: str = "ebk daemon not started", dry_run: bool = False
    ) -> list[tuple[str, str]]:
        """Startup checks, in order; raises the failing check's error, naming the check.

        dry_run (`ebk daemon --check`) writes nothing: the state directory is probed, not
        created. Preflight findings under policy 'warn' are kept in self.warnings.
        """
        done: list[tuple[str, str]] = []
        self.warnings = []
        config = runtime.config
        state_dir = Path(config.daemon.state_dir)
        done.append(("config", f"{config.source}: {len(config.daemon.jobs)} jobs"))
        steps: list[tuple[str, str, Any]] = [
            (
                "state directory",
                config.daemon.state_dir,
                lambda: probe_state_dir(state_dir) if dry_run else StateStore(state_dir),
            ),
            (
                "key provider round trip",
                config.keys.provider,
                runtime.checked_key_providers,
            ),
            (
                "storage reachable",
                config.repository.url,
                runtime.repository.probe,
            ),
        ]
        if any(self.registry[j.kind].uses_cluster for j in config.daemon.jobs):
            steps.append(
                (
                    "preflight",
                    "encryption at rest of the cluster's paths",
                    lambda: enforce(config, purpose="backup"),
                )
            )
        for name, detail, step in steps:
            try:
                result = step()
            except EbkError as exc:
                raise _prefixed(exc, f"{refusal}: {name} check failed") from None
            failing = result.failing() if name == "preflight" and result is not None else []
            if failing:
                self.warnings.append(
                    (name, f"{len(failing)} path(s) not proven encrypted (policy 'warn')")
                )
            done.append((name, detail))
        return done

    # -- scheduling -----------------------------------------------------------------------

    def _next_runs(self) -> list[tuple[str, str, float]]:
        scheduler, runtime = self.scheduler, self.runtime
        if scheduler is None or runtime is None or not scheduler.running:
            return []
        kinds = {j.name: j.kind for j in runtime.config.daemon.jobs}
        out = []
        for job in scheduler.get_jobs():
            if job.next_run_time is not None and job.id in kinds:
                out.append((job.id, kinds[job.id], job.next_run_time.timestamp()))
        return out

    def _add_job(self, job: JobConfig, trigger: BaseTrigger) -> None:
        """Schedule a job; overdue since its last recorded run, it runs once now."""
        assert self.scheduler is not None and self.state is not None
        now = utcnow()
        state = self.state.ensure(job.name, now)
        reference = state.reference()
        overdue = False
        if reference is not None:
            due = next_after(trigger, job, reference)
            overdue = due is not None and due <= now
        kwargs: dict[str, Any] = {}
        if overdue:
            kwargs["next_run_time"] = now
            log.info(
                "job missed a run while the daemon was down; running it once now",
                job=job.name,
                last_run=state.last_run or None,
                since=state.since,
            )
        self.scheduler.add_job(
            self._execute,
            trigger,
            args=[job.name],
            id=job.name,
            name=job.name,
            replace_existing=True,
            **kwargs,
        )
        self.metrics.declare(job.name, job.kind)
        if state.last_success:
            self.metrics.last_success.labels(job.name, job.kind).set(
                datetime.fromisoformat(state.last_success).timestamp()
            )

    def _schedule(
        self, runtime: Runtime, triggers: dict[str, BaseTrigger], previous: Runtime | None
    ) -> None:
        assert self.scheduler is not None
        old = {j.name: j for j in previous.config.daemon.jobs} if previous else {}
        new = {j.name: j for j in runtime.config.daemon.jobs}
        for name, job in old.items():
            if name not in new or new[name].kind != job.kind:
                with contextlib.suppress(Exception):
                    self.scheduler.remove_job(name)
                self.metrics.forget(name, job.kind)
        for name, job in new.items():
            before = old.get(name)
            if before is not None and before.kind == job.kind:
                if (before.cron, before.interval_seconds) != (job.cron, job.interval_seconds):
                    self.scheduler.reschedule_job(name, trigger=triggers[name])
                continue
            self._add_job(job, triggers[name])
        self._triggers = triggers

    # -- running a job --------------------------------------------------------------------

    def _postgres(self) -> PostgresConfig | None:
        return self.runtime.config.postgres if self.runtime is not None else None

    def _backup_running(self) -> bool:
        """A physical or logical job is running (the window the database metrics label)."""
        if self.runtime is None:
            return False
        kinds = {j.name or j.kind: j.kind for j in self.runtime.config.daemon.jobs}
        with self._running_lock:
            return any(kinds.get(n) in ("physical", "logical") for n in self._running)

    @contextlib.contextmanager
    def _tracked(self, name: str) -> Iterator[None]:
        with self._running_lock:
            self._running[name] = threading.current_thread()
        try:
            yield
        finally:
            with self._running_lock:
                self._running.pop(name, None)

    def _execute(self, name: str) -> None:
        runtime = self.runtime
        assert runtime is not None and self.state is not None
        job = next((j for j in runtime.config.daemon.jobs if j.name == name), None)
        if job is None:
            return
        if self.cancel.is_set():
            log.info("job not started: the daemon is shutting down", job=name)
            return
        kind = self.registry[job.kind]
        started, t0 = utcnow(), time.monotonic()
        result = JobResult()
        with (
            self._tracked(name),
            structlog.contextvars.bound_contextvars(job=name, job_kind=job.kind),
        ):
            jlog = structlog.get_logger("ebk.daemon.job")
            self.metrics.running.labels(name, job.kind).set(1)
            jlog.info("job started")
            try:
                result = kind.run(JobContext(runtime, job, self.cancel, jlog))
                outcome = "success"
            except Interrupted as exc:
                outcome = "interrupted"
                jlog.warning("job interrupted; its partial work was cleaned up", error=exc.message)
            except LockBusy as exc:
                outcome = "lock_busy"
                jlog.warning("job skipped: lock busy", error=exc.message)
            except EbkError as exc:
                outcome = "interrupted" if self.cancel.is_set() else "failure"
                jlog.error("job failed", error=exc.message, hint=exc.hint, exit_code=exc.exit_code)
            except Exception as exc:
                outcome = "interrupted" if self.cancel.is_set() else "failure"
                jlog.exception("job failed with an unexpected error", error=repr(exc))
            duration = time.monotonic() - t0
            finished = utcnow()
            self.metrics.running.labels(name, job.kind).set(0)
            self.metrics.observe(
                name,
                job.kind,
                outcome=outcome,
                finished=finished.timestamp(),
                duration=duration,
                nbytes=result.nbytes,
            )
            if outcome != "interrupted":
                self.state.record(name, started, finished, outcome)
            if outcome == "success":
                jlog.info(
                    "job succeeded",
                    backup_id=result.backup_id,
                    bytes=result.nbytes,
                    duration_seconds=round(duration, 3),
                    detail=result.detail,
                )

    # -- probes ---------------------------------------------------------------------------

    def _health(self) -> tuple[bool, str]:
        """Alive unless the scheduler died while the daemon meant to run (restart it)."""
        scheduler = self.scheduler
        if self._not_ready == "" and scheduler is not None and not scheduler.running:
            return False, "the scheduler stopped"
        return True, ""

    def _ready(self) -> tuple[bool, str]:
        if self._not_ready:
            return False, self._not_ready
        scheduler = self.scheduler
        if scheduler is None or not scheduler.running:
            return False, "the scheduler is not running"
        key_reason = self.key_policy.not_ready_reason()
        if key_reason:
            return False, key_reason
        stale = self.verify.not_ready_reason()
        if stale:
            return False, stale
        wal_lag = self.wal.not_ready() if self.wal is not None else ""
        if wal_lag:
            return False, wal_lag
        return True, ""

    def _set_not_ready(self, reason: str) -> None:
        self._not_ready = reason
        self.metrics.ready.set(0 if reason else 1)

    # -- signals, reload, main loop -------------------------------------------------------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload_requested = True

    def _reload(self) -> None:
        self._reload_requested = False
        self.notifier.reloading()
        previous = self.runtime
        assert previous is not None
        log.info("reloading the configuration", source=str(self.config_path))
        try:
            config = load_config(self.config_path)
            triggers = self._validate_jobs(config)
            candidate = Runtime(config)
            self.check(candidate, refusal="the new configuration")
        except EbkError as exc:
            self.metrics.reloads.labels("rejected").inc()
            log.error(
                "config reload rejected; the daemon keeps running on the previous configuration",
                error=exc.message,
                hint=exc.hint,
            )
        else:
            for key in ("listen", "state_dir"):
                if getattr(config.daemon, key) != getattr(previous.config.daemon, key):
                    log.warning(f"daemon.{key} changed; it takes effect at the next restart")
            if config.daemon.timezone != previous.config.daemon.timezone:
                log.warning(
                    "daemon.timezone changed; it applies to changed jobs now and to "
                    "all jobs at the next restart"
                )
            configure_logging(config.log.level, config.log.format)
            self.runtime = candidate
            self._schedule(candidate, triggers, previous)
            self.metrics.reloads.labels("applied").inc()
            log.info("configuration reloaded", jobs=[j.name for j in config.daemon.jobs])
        self.notifier.ready(status="running")

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        self._set_not_ready("starting")
        runtime = self.load()
        for name, detail in self.check(runtime):
            log.info("startup check passed", check=name, detail=detail)
        config = runtime.config
        triggers = self._validate_jobs(config)
        self.runtime = runtime
        self.state = StateStore(Path(config.daemon.state_dir))
        _route_apscheduler_logs()
        grace = config.daemon.misfire_grace_seconds or None
        self.scheduler = BackgroundScheduler(
            timezone=config.daemon.timezone,
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace},
        )
        self.http = StatusServer(
            config.daemon.listen,
            health=self._health,
            ready=self._ready,
            metrics=self.metrics.render,
        )
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self._schedule(runtime, triggers, None)
        self.scheduler.start()
        self.http.start()
        self.wal = start_wal_archiver(lambda: self.runtime, config, self.metrics.registry)
        self._set_not_ready("")
        log.info(
            "daemon ready",
            listen=self.http.url,
            jobs=[j.name for j in config.daemon.jobs],
            pid=os.getpid(),
            systemd=self.notifier.enabled,
        )
        self.notifier.ready(status="running")
        return self._loop()

    def _loop(self) -> int:
        assert self.scheduler is not None
        interval = self.notifier.watchdog_interval
        last_ping = 0.0
        while self._stop_signal is None:
            if self._reload_requested:
                self._reload()
            if interval is not None and time.monotonic() - last_ping >= interval:
                if self.scheduler.running:  # a dead scheduler lets the watchdog restart us
                    self.notifier.watchdog()
                last_ping = time.monotonic()
            time.sleep(POLL_SECONDS)
        return self._shutdown(signal.Signals(self._stop_signal).name)

    def _shutdown(self, why: str) -> int:
        assert self.runtime is not None and self.scheduler is not None
        timeout = self.runtime.config.daemon.shutdown_timeout_seconds
        self._set_not_ready("shutting down")
        self.notifier.stopping()
        with self._running_lock:
            running = sorted(self._running)
        log.info("shutting down", signal=why, running_jobs=running, timeout_seconds=timeout)
        self.scheduler.shutdown(wait=False)
        self.cancel.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._running_lock:
                if not self._running:
                    break
            time.sleep(0.05)
        with self._running_lock:
            stuck = sorted(self._running)
        if self.http is not None:
            self.http.close()
        if self.wal is not None:
            self.wal.close()
        if stuck:
            log.error(
                "jobs did not stop in time; exiting anyway (`ebk repo check --clean` "
                "removes what they left)",
                jobs=stuck,
                timeout_seconds=timeout,
            )
            sys.stderr.flush()
            os._exit(Interrupted.exit_code)
        log.info("daemon stopped")
        return 0
