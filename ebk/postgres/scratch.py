"""A throwaway PostgreSQL for verification: private Unix socket, no TCP, no archiving.

The server runs from a data directory inside a verification scratch directory
(ebk.app.verify owns that), listens only on a socket directory of its own
(mode 0700) under a free port number, with ``archive_mode = off``, no WAL
senders, a small ``max_connections`` and an ``hba_file`` that trusts only that
socket.  As root it runs as the ``postgres`` user (PostgreSQL refuses root).
``stop()`` never raises: it runs on every exit path.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ebk.childenv import child_env
from ebk.config import PostgresConfig
from ebk.errors import PostgresError
from ebk.postgres.tools import find_tool, tool_major

SERVER_USER = "postgres"
BOOTSTRAP_USER = "postgres"  # of clusters this module initdb's


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def as_server(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *argv]
    return argv


def server_owner() -> tuple[int, int] | None:
    """(uid, gid) the server's files must belong to; None: ours already."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(SERVER_USER)
    return entry.pw_uid, entry.pw_gid


def give_to_server(path: Path) -> None:
    owner = server_owner()
    if owner is not None:
        os.chown(path, *owner)


def server_bin_dir(major: int, bin_dir: str) -> Path:
    """The bin dir of exactly ``major``'s server (a data directory needs its own major)."""
    postgres = find_tool("postgres", major, bin_dir)
    found = tool_major(postgres)
    if found != major:
        raise PostgresError(
            f"verification needs the PostgreSQL {major} server (postgres, pg_ctl, initdb); "
            f"found only {postgres} (PostgreSQL {found})",
            hint=f"install postgresql-{major} on the verifying host, or set postgres.bin_dir "
            f"to its bin dir",
        )
    return Path(postgres).parent


def _run(argv: list[str], what: str, *, timeout: float, log_file: Path | None = None) -> str:
    try:
        proc = subprocess.run(
            as_server(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresError(f"{what} failed: {exc}") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise PostgresError(
            f"{what} failed (exit {proc.returncode}): {tail}",
            hint=f"the scratch server's log is {log_file}" if log_file else "",
        )
    return proc.stdout


@dataclass
class ScratchServer:
    """One server on ``data_dir``; ``socket_dir`` and ``log_file`` sit beside it."""

    data_dir: Path
    socket_dir: Path
    log_file: Path
    bin_dir: Path
    port: int = field(default_factory=free_port)
    files_dir: Path | None = None  # hba file and tool output; default: beside socket_dir
    superuser: str = BOOTSTRAP_USER
    started: bool = False

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def private_files(self) -> Path:
        return self.files_dir or self.socket_dir.parent

    def initdb(self) -> None:
        self.data_dir.mkdir(mode=0o700)
        give_to_server(self.data_dir)
        _run(
            [
                self.tool("initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                BOOTSTRAP_USER,
                "--no-sync",
                "-E",
                "UTF8",
                "--locale",
                "C",
            ],
            f"initdb in {self.data_dir}",
            timeout=300,
        )

    def _prepare(self) -> Path:
        """Socket dir and hba file of our own; a restored data dir keeps its files untouched."""
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        give_to_server(self.socket_dir)
        hba = self.private_files / "ebk_verify_hba.conf"
        hba.write_text("local all all trust\n")
        os.chmod(hba, 0o600)
        give_to_server(hba)
        if not (self.data_dir / "postgresql.conf").exists():  # Debian keeps it in /etc
            conf = self.data_dir / "postgresql.conf"
            conf.write_text("# written by ebk verify: the backup held no postgresql.conf\n")
            give_to_server(conf)
        self.log_file.touch(mode=0o600)  # a server log can quote data
        os.chmod(self.log_file, 0o600)
        give_to_server(self.log_file)
        return hba

    def start(self, *, timeout: float) -> None:
        """Start and wait until consistent (a restored backup replays its WAL first)."""
        hba = self._prepare()
        settings = {
            "port": str(self.port),
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "hba_file": f"'{hba}'",
            "archive_mode": "off",
            "archive_command": "''",
            "restore_command": "''",
            "primary_conninfo": "''",
            "max_wal_senders": "0",
            "max_connections": "10",
            "shared_buffers": "64MB",
            "shared_preload_libraries": "''",
            "ssl": "off",
            "logging_collector": "off",
            "synchronous_standby_names": "''",
            "fsync": "off",  # scratch: thrown away after the checks
            "jit": "off",  # also under systemd's MemoryDenyWriteExecute=yes
        }
        options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        self.started = True  # from here on stop() must try, even if start fails half-way
        _run(
            [
                self.tool("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                options,
                "-w",
                "-t",
                str(int(max(timeout, 1))),
                "start",
            ],
            f"starting the scratch PostgreSQL in {self.data_dir}",
            timeout=timeout + 30,
            log_file=self.log_file,
        )

    def stop(self) -> None:
        """Stop it if it may run; never raises."""
        if not self.started:
            return
        stop_data_dir(self.bin_dir, self.data_dir)
        self.started = False

    def config(self, user: str | None = None, dbname: str = "postgres") -> PostgresConfig:
        """A PostgresConfig that reaches this server (for restore_logical and fingerprints)."""
        cfg = PostgresConfig()
        cfg.host = str(self.socket_dir)
        cfg.port = self.port
        cfg.user = user or self.superuser
        cfg.dbname = dbname
        cfg.bin_dir = str(self.bin_dir)
        return cfg

    def connect(self, dbname: str = "postgres", user: str | None = None) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=user or self.superuser,
            dbname=dbname,
            autocommit=True,
            connect_timeout=30,
        )

    def find_superuser(self, known_role: str) -> None:
        """A restored cluster's bootstrap superuser (oid 10), asked as a role known to exist."""
        for user in dict.fromkeys([self.superuser, known_role]):
            try:
                with self.connect(user=user) as conn:
                    row = conn.execute("SELECT rolname FROM pg_roles WHERE oid = 10").fetchone()
            except psycopg.Error:
                continue
            if row:
                self.superuser = str(row[0])
                return
        raise PostgresError(
            "cannot connect to the scratch PostgreSQL as its superuser "
            f"(tried {self.superuser!r} and {known_role!r})",
            hint=f"the server log is {self.log_file}",
        )

    def version(self) -> str:
        with self.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def databases(self) -> list[str]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                "ORDER BY 1"
            ).fetchall()
        return [str(r[0]) for r in rows]


def stop_data_dir(bin_dir: Path, data_dir: Path) -> None:
    """pg_ctl stop (fast, then immediate) when a postmaster.pid is there; never raises."""
    if not (data_dir / "postmaster.pid").exists():
        return
    for mode in ("fast", "immediate"):
        try:
            _run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data_dir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    "60",
                    "stop",
                ],
                "stopping the scratch PostgreSQL",
                timeout=90,
            )
            return
        except PostgresError:
            continue
