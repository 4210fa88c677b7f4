"""A throwaway PostgreSQL cluster for a benchmark: initdb in a directory, start on its
own loopback port, stop and remove it again.  As root, the server runs as the
`postgres` user (PostgreSQL refuses root); clients connect over TCP with trust
authentication that only 127.0.0.1 can use, and only while the benchmark runs."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ebk.childenv import child_env
from ebk.errors import PostgresError
from ebk.postgres import scratch
from ebk.postgres.scratch import SERVER_USER, free_port, give_to_server

START_TIMEOUT = 120


@dataclass
class BenchCluster:
    """One cluster under ``root``: ``root/pgdata`` and ``root/postgres.log``."""

    root: Path
    bin_dir: Path
    settings: dict[str, str]
    port: int = field(default_factory=free_port)
    running: bool = False

    @property
    def data_dir(self) -> Path:
        return self.root / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def _run(
        self, argv: list[str], what: str, *, as_server: bool = True, timeout: float = 600
    ) -> str:
        full = scratch.as_server(argv) if as_server else argv
        try:
            proc = subprocess.run(
                full,
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
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise PostgresError(
                f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}",
                hint=f"the server log is {self.log_file}",
            )
        return proc.stdout

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def create(self) -> None:
        self.data_dir.mkdir(mode=0o700)
        give_to_server(self.data_dir)
        self.log_file.touch()
        give_to_server(self.log_file)
        self._run(
            [
                self.tool("initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                SERVER_USER,
                "-E",
                "UTF8",
                "--locale",
                "C",
            ],
            f"initdb in {self.data_dir}",
        )
        conf = "".join(f"{k} = {v}\n" for k, v in self.settings.items())
        # Loopback TCP only, no Unix socket left behind in a shared directory.
        conf += f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
        conf += "unix_socket_directories = ''\n"
        with (self.data_dir / "postgresql.auto.conf").open("a") as fh:
            fh.write(conf)

    def start(self) -> None:
        self.running = True  # from here on stop() must try, even if start fails half-way
        self._run(
            [
                self.tool("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(START_TIMEOUT),
                "start",
            ],
            f"starting PostgreSQL in {self.data_dir}",
        )

    def stop(self) -> None:
        """Stop the server if it may be running; never raises (used on every exit path)."""
        if not self.running:
            return
        if (self.data_dir / "postmaster.pid").exists():
            argv = [
                self.tool("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ]
            for mode in ("fast", "immediate"):
                argv[4] = mode
                try:
                    self._run(argv, "stopping PostgreSQL")
                    break
                except PostgresError:
                    continue
        self.running = False

    def remove(self) -> None:
        """Stop, then delete what this cluster created; the directory is left as found."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self._run(
            [
                self.tool("psql"),
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SERVER_USER,
                "-d",
                db,
                "-Atq",
                "-c",
                sql,
            ],
            f"psql on port {self.port}",
            as_server=False,
        ).strip()

    def pgbench(self, args: list[str], *, cwd: Path, timeout: float) -> str:
        """pgbench as a client (the invoking user); returns its stdout."""
        argv = [
            self.tool("pgbench"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            SERVER_USER,
            *args,
        ]
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=child_env(),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresError(f"pgbench failed: {exc}") from None
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-5:]
            raise PostgresError(
                f"pgbench {' '.join(args[:3])} failed: {' | '.join(tail)}",
                hint=f"the server log is {self.log_file}",
            )
        return proc.stdout

    def version(self) -> str:
        return self.psql("SHOW server_version")
