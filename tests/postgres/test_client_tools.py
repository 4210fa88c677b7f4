"""Client tools matched to the server's major, and servers older than 15 refused.

The discovery tests use the real client programs of two majors (Debian's 15 and
the 17 wheel) laid out as Debian does (/usr/lib/postgresql/<N>/bin, here under a
temp root); they start no server.  No PostgreSQL older than 15 can be installed
here, so the refusal of such a server is a unit test of ``require_supported``
(the check both the SQL and the replication connection run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ebk.errors import ConfigError, PostgresError
from ebk.postgres.connection import require_supported
from ebk.postgres.tools import find_tool, tool_major
from tests.support.postgres import pg_build

PG15 = pg_build(15).require().bin_dir
PG17 = pg_build(17).require().bin_dir


@pytest.fixture
def debian_root(tmp_path: Path) -> Path:
    root = tmp_path / "usr-lib-postgresql"
    for major, bin_dir in ((15, PG15), (17, PG17)):
        (root / str(major)).mkdir(parents=True)
        (root / str(major) / "bin").symlink_to(bin_dir)
    return root


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "path"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


def test_tool_major_reads_the_version() -> None:
    assert tool_major(str(PG15 / "pg_dump")) == 15
    assert tool_major(str(PG17 / "pg_verifybackup")) == 17
    assert tool_major("/bin/true") is None
    assert tool_major("/nonexistent/pg_dump") is None


def test_exact_major_first_then_newer(debian_root: Path, empty_path: Path) -> None:
    assert find_tool("pg_dump", 15, debian_root=debian_root) == str(debian_root / "15/bin/pg_dump")
    # No 16 tools: the newer 17 ones can dump a 16 server.
    assert find_tool("pg_dump", 16, debian_root=debian_root) == str(debian_root / "17/bin/pg_dump")
    assert find_tool("pg_restore", 17, debian_root=debian_root).startswith(str(debian_root / "17"))


def test_older_tool_on_path_is_refused_and_named(debian_root: Path, empty_path: Path) -> None:
    (empty_path / "pg_dump").symlink_to(PG15 / "pg_dump")
    with pytest.raises(PostgresError) as err:
        find_tool("pg_dump", 18, debian_root=debian_root)
    assert "cannot find pg_dump of PostgreSQL 18 or newer" in err.value.message
    assert "is PostgreSQL 15, older than the server" in err.value.message
    assert "postgresql-client-18" in (err.value.hint or "")
    assert err.value.exit_code == 7


def test_newer_tool_on_path_is_used(tmp_path: Path, empty_path: Path) -> None:
    (empty_path / "pg_dump").symlink_to(PG17 / "pg_dump")
    assert find_tool("pg_dump", 16, debian_root=tmp_path / "none") == str(empty_path / "pg_dump")


def test_configured_bin_dir_is_the_only_place(debian_root: Path, tmp_path: Path) -> None:
    assert find_tool("psql", 16, str(PG17), debian_root=debian_root) == str(PG17 / "psql")
    with pytest.raises(ConfigError) as err:
        find_tool("pg_verifybackup", 17, str(PG15), debian_root=debian_root)
    assert "is from PostgreSQL 15; the server (or backup) is PostgreSQL 17" in err.value.message
    assert "postgres.bin_dir" in (err.value.hint or "")
    assert err.value.exit_code == 2
    with pytest.raises(ConfigError, match="has no pg_dump"):
        find_tool("pg_dump", 15, str(tmp_path), debian_root=debian_root)


@pytest.mark.parametrize(
    ("num", "shown"), [(140011, "PostgreSQL 14"), (90624, "server_version_num 90624")]
)
def test_servers_older_than_15_are_refused(num: int, shown: str) -> None:
    """Unit test: no server older than 15 is installed on this machine."""
    with pytest.raises(PostgresError) as err:
        require_supported(num, "db1:5432")
    assert (
        err.value.message
        == f"{shown} at db1:5432 is not supported: ebk needs PostgreSQL 15 or newer"
    )
    assert err.value.exit_code == 7
    for num_ok in (150000, 160002, 170010, 180006):
        require_supported(num_ok, "db1:5432")


def test_no_tool_anywhere_says_what_to_install(tmp_path: Path, empty_path: Path) -> None:
    with pytest.raises(PostgresError) as err:
        find_tool("pg_restore", 16, debian_root=tmp_path / "none")
    assert err.value.message == "cannot find pg_restore of PostgreSQL 16 or newer"
    assert "install postgresql-client-16" in (err.value.hint or "")
