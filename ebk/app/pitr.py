"""Point-in-time recovery: the base backup for a target, and the recovery settings.

``ebk restore latest --to DIR --target-time TS`` restores the newest physical
backup that ended before the target and leaves a data directory that, when
started, fetches WAL with `ebk wal-fetch` (every file authenticated) and
replays to the target.  The restored cluster gets ``archive_mode = off``: a
copy must never archive into the source's repository, where its WAL (on a
timeline the source may also create) would collide with the source's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click

from ebk.app.walcheck import parse_lsn
from ebk.errors import BackupNotFound, ConfigError, PostgresError
from ebk.manifest import Manifest
from ebk.repository import Catalog
from ebk.runtime import Runtime
from ebk.text import printable

TARGET_KINDS = ("time", "lsn", "xid", "name")
SETTINGS_MARK = "# ebk restore: point-in-time recovery"


@dataclass(frozen=True)
class RecoveryTarget:
    kind: str  # time | lsn | xid | name
    value: str
    action: str = "promote"  # promote | pause | shutdown

    def validate(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ConfigError(f"unknown recovery target kind {self.kind!r}")
        if self.action not in ("promote", "pause", "shutdown"):
            raise ConfigError(f"--target-action {self.action!r}: use promote, pause or shutdown")
        try:
            if self.kind == "time":
                self.when()
            elif self.kind == "lsn":
                parse_lsn(self.value)
            elif self.kind == "xid" and not self.value.isdigit():
                raise ValueError("a transaction id is a number")
            elif self.kind == "name" and (not self.value or len(self.value) > 63):
                raise ValueError("a restore point name is 1..63 characters")
        except ValueError as exc:
            raise ConfigError(
                f"--target-{self.kind} {self.value!r} is not valid: {exc}",
                hint="time: 2026-11-30T14:05:00+00:00; lsn: 0/3000060; xid: 1234; "
                "name: as given to pg_create_restore_point()",
            ) from None

    def when(self) -> datetime:
        moment = datetime.fromisoformat(self.value.replace(" ", "T"))
        if moment.tzinfo is None:
            raise ValueError("give a time zone (e.g. +00:00 or Z)")
        return moment

    def settings(self) -> dict[str, str]:
        value = self.value
        if self.kind == "time":
            value = self.when().astimezone(UTC).isoformat(sep=" ")
        return {
            f"recovery_target_{self.kind}": value,
            "recovery_target_action": self.action,
            "recovery_target_timeline": "latest",
        }


def _ended_before(manifest: Manifest, target: RecoveryTarget) -> bool:
    if target.kind == "time":
        stop = datetime.fromisoformat(manifest.stop_time)
        if stop.tzinfo is None:
            stop = stop.replace(tzinfo=UTC)
        return stop < target.when()
    if target.kind == "lsn":
        return manifest.stop_lsn is not None and parse_lsn(manifest.stop_lsn) <= parse_lsn(
            target.value
        )
    return True  # xid / name: no position known; the newest backup (or the one named)


def choose_backup(catalog: Catalog, target: RecoveryTarget) -> Manifest:
    """The newest complete physical backup that ended before the target."""
    physical = [m for m in catalog.backups if m.kind == "physical"]
    candidates = [m for m in physical if _ended_before(m, target)]
    if not candidates:
        raise BackupNotFound(
            f"no complete physical backup ended before --target-{target.kind} {target.value}",
            hint="`ebk list` shows the backups and their stop times; choose a later target",
        )
    return candidates[-1]


def default_restore_command(config_path: Path | None) -> str:
    """`ebk wal-fetch` as this ebk was started, with this config."""
    argv0 = Path(sys.argv[0]).resolve()
    if argv0.name == "ebk" and os.access(argv0, os.X_OK):
        program = [str(argv0)]
    else:
        program = [sys.executable, "-m", "ebk"]
    config = ["--config", str(config_path.resolve())] if config_path else []
    return shlex.join([*program, *config, "wal-fetch"]) + " %f %p"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def write_recovery_settings(
    directory: Path,
    target: RecoveryTarget | None,
    restore_command: str,
    owner: tuple[int, int] | None,
) -> None:
    """Append the recovery settings to postgresql.auto.conf and create recovery.signal."""
    settings = {"restore_command": restore_command, "archive_mode": "off"}
    if target is not None:
        settings.update(target.settings())
    lines = [f"\n{SETTINGS_MARK}\n"] + [f"{k} = {_quote(v)}\n" for k, v in settings.items()]
    auto = directory / "postgresql.auto.conf"
    with open(auto, "a") as f:
        f.writelines(lines)
    signal = directory / "recovery.signal"
    signal.touch(mode=0o600)
    for path in (auto, signal):
        if owner is not None:
            os.chown(path, *owner)


_OUTCOME = re.compile(
    r"(recovery stopping (?:before|after|at) .*|pausing at the end of recovery"
    r"|archive recovery complete|database system is ready to accept connections"
    r"|FATAL:  .*)"
)


def start_and_replay(
    directory: Path,
    *,
    bin_dir: str,
    user: str | None,
    port: int | None,
    timeout: float = 3600.0,
) -> str:
    """Start the restored cluster and wait until recovery stopped at its target (or failed).

    Returns the server log line that says where recovery stopped.
    """
    log_file = directory / "ebk-restore.log"
    pg_ctl = str(Path(bin_dir) / "pg_ctl") if bin_dir else "pg_ctl"
    options = f"-p {port}" if port else ""
    argv = [pg_ctl, "-D", str(directory), "-l", str(log_file), "-o", options, "start"]
    if user is not None and os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PostgresError(f"pg_ctl start failed: {proc.stderr.strip() or proc.stdout.strip()}")
    deadline = time.monotonic() + timeout
    stopped = ""
    while time.monotonic() < deadline:
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        for match in _OUTCOME.finditer(text):
            line = match.group(1)
            if line.startswith("FATAL"):
                raise PostgresError(
                    f"recovery failed: {line.strip()}",
                    hint=f"see {log_file}; the restored directory is left as it is",
                )
            if line.startswith("recovery stopping"):
                stopped = line
            if line.startswith(("pausing", "database system is ready")) and (
                stopped or line.startswith("pausing")
            ):
                return stopped or line
        time.sleep(0.2)
    raise PostgresError(f"recovery did not reach its target within {timeout:.0f}s; see {log_file}")


def pitr_options(options: Mapping[str, object]) -> RecoveryTarget | None:
    """The recovery target of `ebk restore`'s --target-* options (at most one)."""
    given = [(k, options.get(f"target_{k}")) for k in TARGET_KINDS]
    chosen = [(k, str(v)) for k, v in given if v is not None]
    if len(chosen) > 1:
        raise ConfigError(
            "give at most one of --target-time, --target-lsn, --target-xid, --target-name"
        )
    if not chosen:
        if options.get("start"):
            raise ConfigError("--start replays WAL to a target: give a --target-* option")
        return None
    target = RecoveryTarget(chosen[0][0], chosen[0][1], str(options.get("target_action")))
    target.validate()
    return target


def finish_pitr(
    runtime: Runtime,
    config_path: Path | None,
    directory: Path,
    target: RecoveryTarget,
    options: Mapping[str, object],
    owner: tuple[int, int] | None,
    owner_name: str | None,
) -> None:
    """Write the recovery settings, say what they are, and with --start replay to the target."""
    command = str(options.get("restore_command") or default_restore_command(config_path))
    write_recovery_settings(directory, target, command, owner)
    echo = click.echo
    echo(f"  recovery target: {target.kind} {printable(target.value)} (then {target.action})")
    echo(f"  restore_command = {printable(command)}")
    echo(
        "  archive_mode = off in the restored cluster: it must not archive into this "
        "repository (set another archive_command before you turn it on)"
    )
    if not options.get("start"):
        echo(f"  start it to replay WAL to the target: pg_ctl -D {directory} start")
        return
    port = options.get("port")
    stopped = start_and_replay(
        directory,
        bin_dir=runtime.config.postgres.bin_dir,
        user=owner_name,
        port=int(port) if isinstance(port, int) else None,
    )
    echo(f"  replayed: {printable(stopped.strip())}")
