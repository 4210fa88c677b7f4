"""Verifying backups: every chunk authenticated, and a real restore into a real PostgreSQL.

Levels:

- ``integrity``: fetch every object of the backup, authenticate every chunk,
  compare sizes and SHA-256 with the signed manifest; writes nothing but the
  verification record.
- ``restore``: restore into a scratch directory under ``verify.scratch_dir``
  (plaintext: the preflight applies to it), start a throwaway PostgreSQL of the
  backup's major on a private socket (ebk.postgres.scratch), and check
  ``pg_verifybackup`` (physical), ``pg_amcheck`` (heap and B-tree, within a
  time budget) and the data fingerprints recorded at backup time.

The scratch directory carries an ownership marker (pid, boot id); it is removed
with the server stopped on success, failure and SIGTERM, and the next run sweeps
what a killed verifier left: only directories named ``ebk-verify-*`` that hold
a marker written by this user and whose writer is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import structlog

import ebk
from ebk.app.maintenance import ensure_writer_key
from ebk.childenv import child_env
from ebk.config import parse_duration
from ebk.errors import (
    ConfigError,
    EbkError,
    IntegrityError,
    Interrupted,
    PostgresError,
    RestoreTargetError,
)
from ebk.manifest import Manifest
from ebk.postgres.fingerprint import (
    EXTENSION as FINGERPRINTS,
)
from ebk.postgres.fingerprint import (
    Fingerprints,
    capture_databases,
    compare,
)
from ebk.postgres.scratch import ScratchServer, server_bin_dir, server_owner, stop_data_dir
from ebk.postgres.tools import find_tool
from ebk.preflight.gate import enforce
from ebk.repository import Repository
from ebk.repository.verifications import CheckResult, VerificationRecord
from ebk.restore.reader import open_object
from ebk.restore.session import OpenedBackup, open_backup
from ebk.runtime import Runtime

log = structlog.get_logger("ebk.verify")

SCRATCH_PREFIX = "ebk-verify-"
OWNER_MARKER = ".ebk-verify-owner"
SOCKET_POINTER = ".ebk-verify-socket"  # where the socket went when the scratch path is long
MAX_SOCKET_PATH = 108  # sun_path, with its NUL
MAX_MARKER = 4096
SELECTORS = ("latest", "unverified", "all")
MAX_TOOL_OUTPUT = 64 * 1024


# -- choosing backups ------------------------------------------------------------------


def _unverified(repo: Repository, backups: Sequence[Manifest], level: str) -> list[Manifest]:
    """Backups without a passing record at ``level`` (restore also counts for integrity)."""
    status = statuses(repo, backups)
    if level == "restore":
        return [m for m in backups if status[m.backup_id].restore is None]
    return [m for m in backups if status[m.backup_id].passed is None]


def select_backups(repo: Repository, ref: str, level: str) -> list[Manifest]:
    """ID | latest | unverified (no passing record at this level) | all; oldest first."""
    if ref not in SELECTORS:
        return [repo.resolve(ref)]
    if ref == "latest":
        return [repo.resolve("latest")]
    backups = repo.list_backups().backups
    if ref == "unverified":
        backups = _unverified(repo, backups, level)
    return backups


def newest_unverified_per_kind(repo: Repository, level: str) -> list[Manifest]:
    """The daemon's default: per kind, the newest backup, unless it already passed."""
    newest: dict[str, Manifest] = {}
    for m in repo.list_backups().backups:
        newest[m.kind] = m
    return _unverified(repo, list(newest.values()), level)


# -- the scratch directory -------------------------------------------------------------


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ebk" in cmdline or b"pytest" in cmdline


def _read_marker(entry: Path) -> dict[str, object] | None:
    """The marker of a directory we own, or None (then it is never touched)."""
    marker = entry / OWNER_MARKER
    try:
        st = os.lstat(marker)
        dir_st = os.lstat(entry)
    except OSError:
        return None
    import stat

    if not stat.S_ISREG(st.st_mode) or not stat.S_ISDIR(dir_st.st_mode):
        return None
    if st.st_uid != os.geteuid() or dir_st.st_uid != os.geteuid() or st.st_size > MAX_MARKER:
        return None
    try:
        doc = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != "ebk-verify-scratch":
        return None
    return doc


def sweep_stale(root: Path) -> list[Path]:
    """Remove scratch directories whose verifier is gone (kill -9, power loss)."""
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(SCRATCH_PREFIX) or entry.is_symlink():
            continue
        doc = _read_marker(entry)
        if doc is None:
            continue
        pid = doc.get("pid")
        mine = pid == os.getpid()
        if doc.get("boot_id") == boot_id() and isinstance(pid, int) and _alive(pid) and not mine:
            continue  # another verifier is using it
        bin_dir = doc.get("bin_dir")
        if isinstance(bin_dir, str) and bin_dir:
            stop_data_dir(Path(bin_dir), entry / "pgdata")
        Scratch(entry).remove()
        if not entry.exists():
            log.warning("removed a stale verification scratch directory", path=str(entry))
            removed.append(entry)
    return removed


@dataclass
class Scratch:
    """One verification's directory: marker, pgdata, socket dir, log."""

    path: Path

    @classmethod
    def create(cls, root: Path, backup_id: str) -> Scratch:
        root.mkdir(parents=True, exist_ok=True, mode=0o711 if os.geteuid() == 0 else 0o700)
        path = root / f"{SCRATCH_PREFIX}{backup_id}-{secrets.token_hex(4)}"
        # As root the server (user postgres) must traverse it; nothing in it is readable.
        path.mkdir(mode=0o711 if server_owner() else 0o700)
        os.chmod(path, 0o711 if server_owner() else 0o700)
        scratch = cls(path)
        scratch.write_marker("")
        return scratch

    def write_marker(self, bin_dir: str) -> None:
        doc = {
            "format": "ebk-verify-scratch",
            "pid": os.getpid(),
            "boot_id": boot_id(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "bin_dir": bin_dir,
        }
        tmp = self.path / f"{OWNER_MARKER}.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.path / OWNER_MARKER)

    @property
    def pgdata(self) -> Path:
        return self.path / "pgdata"

    def server(self, bin_dir: Path) -> ScratchServer:
        return ScratchServer(
            self.pgdata,
            self.socket_dir(),
            self.path / "postgres.log",
            bin_dir=bin_dir,
            files_dir=self.path,
        )

    def socket_dir(self) -> Path:
        """``sock`` inside the scratch, unless that path is too long for a Unix socket
        (108 bytes with ``/.s.PGSQL.<port>``): then a private 0700 directory in the
        system's temporary directory, which holds nothing but the socket."""
        inside = self.path / "sock"
        if len(os.fsencode(inside)) + len("/.s.PGSQL.65535") < MAX_SOCKET_PATH:
            return inside
        short = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}sock-"))
        (self.path / SOCKET_POINTER).write_text(str(short))
        return short

    def remove(self) -> None:
        pointer = self.path / SOCKET_POINTER
        with contextlib.suppress(OSError):
            short = Path(pointer.read_text())
            ours = short.parent == Path(tempfile.gettempdir()).resolve() or short.parent == Path(
                tempfile.gettempdir()
            )
            if ours and short.name.startswith(f"{SCRATCH_PREFIX}sock-") and not short.is_symlink():
                shutil.rmtree(short, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def space_needed(manifest: Manifest) -> int:
    """An estimate: physical = its files (+10%, WAL replay); logical = 3x the dumps."""
    if manifest.kind == "physical":
        return int(manifest.size * 1.1) + 64 * 1024 * 1024
    return manifest.plain_size * 3 + 256 * 1024 * 1024


@contextlib.contextmanager
def _no_sigterm() -> Iterator[None]:
    """Cleanup must finish: a second SIGTERM waits until the scratch server is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# -- the checks ------------------------------------------------------------------------


@dataclass
class Budget:
    deadline: float
    cancel: threading.Event | None = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, what: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Interrupted(f"verification stopped before {what} (shutdown)")
        if self.left() <= 0:
            raise Interrupted(f"verification ran out of time (verify.max_duration) before {what}")


def _timed(name: str, run: Callable[[], tuple[str, str]]) -> CheckResult:
    start = time.monotonic()
    outcome, details = run()
    return CheckResult(name, outcome, details, time.monotonic() - start)


def check_chunks(backup: OpenedBackup) -> CheckResult:
    """Every object: every chunk authenticated, size and SHA-256 as the manifest says."""

    def run() -> tuple[str, str]:
        total = 0
        for stored in backup.manifest.objects:
            try:
                with open_object(backup, stored) as reader:
                    reader.finish()
                    total += reader.plain_bytes
            except IntegrityError as exc:
                text = exc.message
                return "fail", text if stored.name in text else f"object {stored.name}: {text}"
        return "pass", f"{len(backup.manifest.objects)} objects, {total} bytes authenticated"

    return _timed("chunks", run)


def _tool_output(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stderr + "\n" + proc.stdout).strip()
    return text[:MAX_TOOL_OUTPUT]


def check_verifybackup(pgdata: Path, manifest: Manifest, bin_dir: str) -> CheckResult:
    def run() -> tuple[str, str]:
        if not (pgdata / "backup_manifest").exists():
            return "skipped", "the backup holds no PostgreSQL backup_manifest"
        tool = find_tool("pg_verifybackup", manifest.major, bin_dir)
        proc = subprocess.run(
            [tool, "--quiet", str(pgdata)],
            capture_output=True,
            text=True,
            check=False,
            env=child_env(),
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            return "fail", _tool_output(proc) or f"exit code {proc.returncode}"
        return "pass", "every file matches PostgreSQL's backup_manifest; WAL parses"

    return _timed("pg_verifybackup", run)


def check_amcheck(
    server: ScratchServer, budget_seconds: float, cancel: threading.Event | None = None
) -> CheckResult:
    """pg_amcheck over every database: heap and B-tree indexes, within its budget.

    Its output goes to a file in the scratch directory (no pipe to fill); the
    daemon's cancel flag stops it within a second.
    """

    def run() -> tuple[str, str]:
        argv = [
            server.tool("pg_amcheck"),
            "-h",
            str(server.socket_dir),
            "-p",
            str(server.port),
            "-U",
            server.superuser,
            "--all",
            "--install-missing",
            "--no-password",
        ]
        out_path = server.private_files / "pg_amcheck.out"
        deadline = time.monotonic() + max(budget_seconds, 1)
        fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w+") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                stdin=subprocess.DEVNULL,
            )
            try:
                while True:
                    try:
                        code = proc.wait(timeout=1)
                        break
                    except subprocess.TimeoutExpired:
                        if cancel is not None and cancel.is_set():
                            raise Interrupted(
                                "verification stopped during pg_amcheck (shutdown)"
                            ) from None
                        if time.monotonic() > deadline:
                            return "incomplete", (
                                f"pg_amcheck did not finish within its budget "
                                f"({int(budget_seconds)} s); raise verify.amcheck_budget / "
                                "verify.max_duration"
                            )
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            out.seek(0)
            text = out.read(MAX_TOOL_OUTPUT).strip()
        if code == 0:
            return "pass", "heap and B-tree indexes of every database checked, no corruption"
        return "fail", text or f"exit code {code}"

    return _timed("pg_amcheck", run)


def check_fingerprints(manifest: Manifest, server: ScratchServer) -> CheckResult:
    def run() -> tuple[str, str]:
        raw = manifest.extensions.get(FINGERPRINTS)
        if raw is None:
            return "skipped", "the backup records no fingerprints (written by an older ebk)"
        try:
            expected = Fingerprints.from_json(raw)
        except ValueError as exc:
            return "fail", f"the recorded fingerprints are malformed ({exc})"
        present = set(server.databases())
        found = capture_databases(server.config(), [d for d in expected.databases if d in present])
        findings = compare(expected, found)
        failures = [f for f in findings if f.severity == "fail"]
        text = "; ".join(f.describe() for f in findings)
        tables = sum(len(d.tables) for d in expected.databases.values())
        if failures:
            return "fail", text
        if findings:
            return "warn", text
        return "pass", (
            f"{len(expected.databases)} databases, {tables} tables match "
            f"({expected.consistency} fingerprints)"
        )

    return _timed("fingerprints", run)


# -- one backup ------------------------------------------------------------------------


@dataclass
class Verification:
    manifest: Manifest
    record: VerificationRecord
    stored_as: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def _restore_physical_into(
    runtime: Runtime, backup: OpenedBackup, scratch: Scratch, progress: bool | None
) -> None:
    from ebk.restore.chain import open_chain, restore_chain
    from ebk.restore.physical import restore_physical

    spaces = {
        o.tablespace_oid: str(scratch.path / f"tablespace-{o.tablespace_oid}")
        for o in backup.manifest.objects
        if o.role == "tablespace" and o.tablespace_oid
    }
    if backup.manifest.incremental:  # the whole chain, combined (staging inside the scratch)
        chain = open_chain(runtime.repository, backup.manifest, runtime.checked_key_providers())
        restore_chain(
            chain,
            scratch.pgdata,
            tablespace_map=spaces,
            owner=server_owner(),
            verify=False,  # pg_verifybackup runs as its own, recorded check
            bin_dir=runtime.config.postgres.bin_dir,
            progress=progress,
        )
        return
    restore_physical(
        backup,
        scratch.pgdata,
        tablespace_map=spaces,
        owner=server_owner(),
        verify=False,  # pg_verifybackup runs as its own, recorded check
        bin_dir=runtime.config.postgres.bin_dir,
        progress=progress,
    )


def _restore_logical_into(backup: OpenedBackup, server: ScratchServer) -> CheckResult:
    """Globals (when the backup has them), then every dump, with pg_restore --exit-on-error."""
    from ebk.restore.logical import _pipe, _restore_globals

    def run() -> tuple[str, str]:
        manifest = backup.manifest
        cfg = server.config()
        has_globals = any(o.role == "globals" for o in manifest.objects)
        if has_globals:
            _restore_globals(backup, cfg, manifest.major)
        existing = set(server.databases())
        dumps = [o for o in manifest.objects if o.role == "dump"]
        for stored in dumps:
            name = stored.database or "postgres"
            if name not in existing:
                with server.connect() as conn:
                    conn.execute(
                        psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
                    )
            argv = [
                server.tool("pg_restore"),
                "--exit-on-error",
                "--single-transaction",
                "--no-password",
                "-d",
                name,
            ]
            if not has_globals:  # the roles are not in the backup
                argv[1:1] = ["--no-owner", "--no-privileges"]
            _pipe(backup, stored, argv, cfg, name, f"pg_restore of database {name!r}")
        return "pass", f"{len(dumps)} databases restored with pg_restore"

    return _timed("pg_restore", run)


def verify_one(
    runtime: Runtime,
    manifest: Manifest,
    *,
    level: str,
    budget: Budget,
    progress: bool | None = None,
) -> Verification:
    """Verify one backup; the checks' outcomes go into the record (failures are outcomes)."""
    started = time.monotonic()
    verified_at = datetime.now(UTC)
    providers = runtime.checked_key_providers()
    backup = open_backup(runtime.repository, manifest, providers, kind=manifest.kind)
    checks: list[CheckResult] = []
    timings: dict[str, float] = {}
    server_version: str | None = None
    if level == "integrity":
        checks.append(check_chunks(backup))
        timings["fetch_decrypt"] = checks[-1].duration_seconds
    else:
        server_version = _verify_restore(runtime, backup, checks, timings, budget, progress)
    record = VerificationRecord(
        backup_id=manifest.backup_id,
        level=level,
        verified_at=verified_at.isoformat(timespec="microseconds"),
        duration_seconds=time.monotonic() - started,
        ebk_version=ebk.__version__,
        server_version=server_version,
        checks=checks,
    )
    return Verification(manifest, record, timings=timings)


def _verify_restore(
    runtime: Runtime,
    backup: OpenedBackup,
    checks: list[CheckResult],
    timings: dict[str, float],
    budget: Budget,
    progress: bool | None,
) -> str | None:
    cfg = runtime.config
    manifest = backup.manifest
    root = Path(cfg.verify.scratch_dir)
    enforce(cfg, purpose="restore", restore_target=root)
    root.mkdir(parents=True, exist_ok=True, mode=0o711 if os.geteuid() == 0 else 0o700)
    sweep_stale(root)
    need, free = space_needed(manifest), _free_bytes(root)
    if free < need:
        raise RestoreTargetError(
            f"verify.scratch_dir {root} has {free // 2**20} MiB free; verifying backup "
            f"{manifest.backup_id} needs about {need // 2**20} MiB",
            hint="free space there, or point verify.scratch_dir at a larger encrypted volume",
        )
    bin_dir = server_bin_dir(manifest.major, cfg.postgres.bin_dir)
    start_timeout = parse_duration(cfg.verify.start_timeout, "verify.start_timeout")
    amcheck_budget = parse_duration(cfg.verify.amcheck_budget, "verify.amcheck_budget")
    scratch = Scratch.create(root, manifest.backup_id)
    server = scratch.server(bin_dir)
    try:
        scratch.write_marker(str(bin_dir))  # the sweep needs it to stop a leftover server
        t0 = time.monotonic()
        if manifest.kind == "physical":
            budget.check("the restore")
            try:
                _restore_physical_into(runtime, backup, scratch, progress)
            except IntegrityError as exc:
                checks.append(CheckResult("restore", "fail", exc.message, time.monotonic() - t0))
                return None
            timings["fetch_decrypt"] = time.monotonic() - t0
            checks.append(
                CheckResult(
                    "restore",
                    "pass",
                    "every chunk authenticated and written",
                    timings["fetch_decrypt"],
                )
            )
            budget.check("pg_verifybackup")
            checks.append(check_verifybackup(scratch.pgdata, manifest, cfg.postgres.bin_dir))
            timings["pg_verifybackup"] = checks[-1].duration_seconds
            budget.check("starting PostgreSQL")
            t1 = time.monotonic()
            if not _started(server, checks, min(start_timeout, max(budget.left(), 1))):
                return None
            server.find_superuser(cfg.postgres.user)
            timings["postgres_start"] = time.monotonic() - t1
        else:
            t1 = time.monotonic()
            server.initdb()
            server.start(timeout=min(start_timeout, max(budget.left(), 1)))
            timings["postgres_start"] = time.monotonic() - t1
            budget.check("pg_restore")
            t0 = time.monotonic()
            try:
                checks.append(_restore_logical_into(backup, server))
            except (PostgresError, IntegrityError) as exc:
                checks.append(CheckResult("pg_restore", "fail", exc.message, time.monotonic() - t0))
            timings["fetch_decrypt"] = checks[-1].duration_seconds
        version = server.version()
        t2 = time.monotonic()
        if all(c.outcome != "fail" for c in checks):
            budget.check("the checks")
            if manifest.kind == "physical":
                checks.append(
                    check_amcheck(server, min(amcheck_budget, max(budget.left(), 1)), budget.cancel)
                )
            else:
                checks.append(
                    CheckResult("pg_amcheck", "skipped", "pg_restore built every index afresh")
                )
            checks.append(check_fingerprints(manifest, server))
        timings["checks"] = time.monotonic() - t2
        return version
    finally:
        with _no_sigterm():
            server.stop()
            scratch.remove()


def _started(server: ScratchServer, checks: list[CheckResult], timeout: float) -> bool:
    """Start the restored cluster; a failure (WAL replay, missing WAL) is the backup's."""
    t0 = time.monotonic()
    try:
        server.start(timeout=timeout)
    except PostgresError as exc:
        try:
            tail = server.log_file.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            tail = []
        checks.append(
            CheckResult(
                "postgres_start",
                "fail",
                f"{exc.message}\nserver log:\n" + "\n".join(tail),
                time.monotonic() - t0,
            )
        )
        return False
    checks.append(
        CheckResult("postgres_start", "pass", "recovery reached consistency", time.monotonic() - t0)
    )
    return True


# -- a run over several backups --------------------------------------------------------


def verify_backups(
    runtime: Runtime,
    ref: str,
    *,
    level: str,
    progress: bool | None = None,
    cancel: threading.Event | None = None,
    select: Callable[[Repository], Sequence[Manifest]] | None = None,
) -> list[Verification]:
    """Verify the selected backups, record each result (signed), return them all."""
    if level not in ("integrity", "restore"):
        raise ConfigError(f"unknown verification level {level!r}", hint="integrity or restore")
    repo = runtime.repository
    writer = ensure_writer_key(runtime)
    chosen = list(select(repo)) if select else select_backups(repo, ref, level)
    root = Path(runtime.config.verify.scratch_dir)
    if root.is_dir():
        sweep_stale(root)  # what a killed verifier left, before anything else
    max_duration = parse_duration(runtime.config.verify.max_duration, "verify.max_duration")
    budget = Budget(time.monotonic() + max_duration, cancel)
    results: list[Verification] = []
    for manifest in chosen:
        budget.check(f"backup {manifest.backup_id}")
        bound = log.bind(backup_id=manifest.backup_id, level=level)
        bound.info("verification started", kind=manifest.kind)
        try:
            result = verify_one(runtime, manifest, level=level, budget=budget, progress=progress)
        except IntegrityError as exc:  # the manifest or key object did not authenticate
            result = Verification(
                manifest,
                VerificationRecord(
                    manifest.backup_id,
                    level,
                    datetime.now(UTC).isoformat(timespec="microseconds"),
                    0.0,
                    ebk.__version__,
                    None,
                    [CheckResult("authentication", "fail", exc.message)],
                ),
            )
        result.stored_as = repo.verifications().write(result.record, writer)
        for check in result.record.checks:
            if check.outcome in ("fail", "incomplete", "warn"):
                bound.warning(
                    "verification check " + check.outcome, check=check.name, details=check.details
                )
        bound.info(
            "verification finished",
            passed=result.record.passed,
            seconds=round(result.record.duration_seconds, 1),
        )
        results.append(result)
    return results


def failure_error(results: Sequence[Verification]) -> EbkError | None:
    """The error the command exits with: integrity (5) when any check failed."""
    failed = [r for r in results if not r.record.passed]
    if not failed:
        return None
    lines = []
    for r in failed:
        for c in r.record.checks:
            if c.outcome not in ("pass", "warn", "skipped"):
                lines.append(f"backup {r.manifest.backup_id}: {c.name} {c.outcome}: {c.details}")
    return IntegrityError(
        f"{len(failed)} of {len(results)} backup(s) failed verification:\n  " + "\n  ".join(lines),
        hint="do not rely on these backups: take a new backup now, keep the failed one for "
        'investigation, and see docs/operations.md ("Verification failures")',
    )


# -- what listings show ----------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """A backup's verification state from its authentic records only."""

    newest: VerificationRecord | None  # the newest record, passed or not
    passed: VerificationRecord | None  # the newest passing one
    restore: VerificationRecord | None = None  # the newest passing restore verification

    def label(self) -> str:
        if self.newest is not None and not self.newest.passed:
            return f"FAILED ({self.newest.level})"
        if self.passed is None:
            return "-"
        return f"{self.passed.level} {age_text(self.passed.verified_at)} ago"


def age_seconds(iso: str, now: datetime | None = None) -> float | None:
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(((now or datetime.now(UTC)) - when).total_seconds(), 0.0)


def age_text(iso: str) -> str:
    seconds = age_seconds(iso)
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def statuses(
    repo: Repository, backups: Sequence[Manifest], problems: list[str] | None = None
) -> dict[str, Status]:
    found = repo.verifications().latest([m.backup_id for m in backups], problems)
    return {b: Status(v.newest, v.passed, v.restore) for b, v in found.items()}


def newest_verified(
    backups: Sequence[Manifest], status: dict[str, Status], *, level: str | None = None
) -> Manifest | None:
    """The newest backup with a passing record (at ``level`` when given)."""
    for m in reversed(backups):
        state = status.get(m.backup_id)
        if state is None:
            continue
        if (state.restore if level == "restore" else state.passed) is not None:
            return m
    return None
