"""Throwaway PostgreSQL 15 clusters, run as the `postgres` user (it refuses root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.net import free_port

PG_BIN = Path(os.environ.get("EBK_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def make_postgres_dir(prefix: str = "ebk-test-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    give_to_postgres(path)
    return path


@dataclass
class PgCluster:
    """A running cluster; ``psql()`` runs SQL, ``stop()`` shuts it down."""

    data_dir: Path
    port: int
    socket_dir: Path
    log_file: Path
    extra_dirs: list[Path] = field(default_factory=list)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def psql(self, sql: str, db: str = "postgres") -> str:
        proc = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                db,
                "-Atq",
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return proc.stdout.strip()

    def start(self) -> None:
        _as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1",
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
            )

    def config_section(self) -> str:
        return (
            f'[postgres]\nhost = "{self.host}"\nport = {self.port}\nuser = "postgres"\n'
            f'bin_dir = "{PG_BIN}"\n'
        )

    def destroy(self) -> None:
        self.stop()
        for path in [self.data_dir.parent, *self.extra_dirs]:
            shutil.rmtree(path, ignore_errors=True)


def init_cluster(base: Path | None = None, *, port: int | None = None) -> PgCluster:
    """initdb (trust auth on loopback, replication allowed) and start."""
    base = base or make_postgres_dir()
    data = base / "data"
    _as_postgres(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale",
            "C",
        ]
    )
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            "fsync = off\nwal_level = replica\nmax_wal_senders = 10\n"
            "max_replication_slots = 10\nshared_buffers = 64MB\n"
        )
    cluster = PgCluster(data, port or free_port(), base, base / "postgres.log")
    cluster.start()
    return cluster


def start_existing(data_dir: Path, *, port: int | None = None) -> PgCluster:
    """Start a restored data directory on a free port (settings adjusted for the test)."""
    base = data_dir.parent
    cluster = PgCluster(data_dir, port or free_port(), base, base / f"{data_dir.name}.log")
    give_to_postgres(base)
    cluster.start()
    return cluster
