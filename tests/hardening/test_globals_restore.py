"""Finding 12 (issue 10): globals are restored all or nothing, after the existence checks.

Real PostgreSQL 15.  pg_dumpall's script expects `CREATE ROLE` of existing
roles to fail harmlessly; ebk runs it with ON_ERROR_STOP=1 in one
transaction instead, so a refused or failing restore changes no role.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebk.restore.globals import GlobalsFilter
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster, init_cluster


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PgCluster, EbkEnv, str]]:
    cluster = init_cluster()
    try:
        cluster.psql("CREATE ROLE alice LOGIN CREATEDB")
        cluster.psql("CREATE ROLE bob NOLOGIN")
        cluster.psql("CREATE DATABASE appdb OWNER alice")
        cluster.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g", db="appdb")
        cluster.psql("ALTER TABLE t OWNER TO alice", db="appdb")
        env = make_env(tmp_path_factory.mktemp("globals") / "ebk", cluster)
        manifest = json.loads(env.run("backup", "--type", "logical", "--json").stdout)
        assert "globals" in [o["role"] for o in manifest["objects"]]
        # After the backup the roles drift: alice loses CREATEDB, bob is dropped.
        cluster.psql("ALTER ROLE alice NOCREATEDB")
        cluster.psql("DROP ROLE bob")
        yield cluster, env, manifest["backup_id"]
    finally:
        cluster.destroy()


def _roles(cluster: PgCluster) -> str:
    return cluster.psql(
        "SELECT string_agg(rolname || ':' || rolcreatedb, ',' ORDER BY rolname) FROM pg_roles "
        "WHERE rolname IN ('alice', 'bob')"
    )


def test_refused_restore_changes_no_role(source: tuple[PgCluster, EbkEnv, str]) -> None:
    cluster, env, bid = source
    before = _roles(cluster)
    assert before == "alice:false"
    result = env.run(
        "restore",
        bid,
        "--to-db",
        "appdb",
        "--database",
        "appdb",
        "--create",
        "--with-globals",
        expect=10,
    )
    assert "already exists" in result.stderr and "Traceback" not in result.output
    assert _roles(cluster) == before


def test_failing_globals_roll_back_completely(
    source: tuple[PgCluster, EbkEnv, str], tmp_path: Path
) -> None:
    """A CREATEROLE (not superuser) restorer: `CREATE ROLE bob` works, `ALTER ROLE postgres
    SUPERUSER` fails later in the script; bob must not exist afterwards and no database is made."""
    cluster, env, bid = source
    cluster.psql("CREATE ROLE restorer LOGIN CREATEROLE CREATEDB")
    try:
        config = tmp_path / "restorer.toml"
        config.write_text(
            env.config_path.read_text().replace('user = "postgres"', 'user = "restorer"')
        )
        as_restorer = EbkEnv(tmp_path, config, env.repo_dir, env.keyfile)
        before = _roles(cluster)
        result = as_restorer.run(
            "restore",
            bid,
            "--to-db",
            "appcopy_r",
            "--database",
            "appdb",
            "--create",
            "--with-globals",
            expect=7,
        )
        assert "restoring globals with psql" in result.stderr
        assert "Traceback" not in result.output
        assert _roles(cluster) == before
        assert cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'appcopy_r'") == "0"
    finally:
        cluster.psql("DROP ROLE restorer")


def test_globals_restore_over_existing_roles(source: tuple[PgCluster, EbkEnv, str]) -> None:
    cluster, env, bid = source
    env.run(
        "restore", bid, "--to-db", "appcopy", "--database", "appdb", "--create", "--with-globals"
    )
    assert _roles(cluster) == "alice:true,bob:false"
    assert cluster.psql("SELECT count(*) FROM t", db="appcopy") == "100"
    assert cluster.psql("SELECT tableowner FROM pg_tables WHERE tablename = 't'", db="appcopy") == (
        "alice"
    )


def test_filter_only_removes_lines() -> None:
    script = (
        b"SET default_transaction_read_only = off;\n"
        b"CREATE ROLE alice;\n"
        b"ALTER ROLE alice WITH NOSUPERUSER LOGIN;\n"
        b'CREATE ROLE "Odd ""name""";\n'
        b"CREATE ROLE newbie;\n"
        b"COMMENT ON ROLE newbie IS 'two\nCREATE ROLE alice;\nlines';\n"
        b"CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';\n"
        b"GRANT CREATE ON TABLESPACE fast TO alice;\n"
        b"\\unrestrict abc\n"
    )
    flt = GlobalsFilter(["alice", 'Odd "name"', "postgres"])
    # Feed it in awkward pieces: line handling must not depend on chunking.
    out = b"".join(flt(script[i : i + 7] for i in range(0, len(script), 7)))
    kept = out.split(b"\n")
    assert b"CREATE ROLE newbie;" in kept
    assert b"ALTER ROLE alice WITH NOSUPERUSER LOGIN;" in kept
    assert b"CREATE ROLE alice;" not in kept and b'CREATE ROLE "Odd ""name""";' not in kept
    assert not [line for line in kept if b"TABLESPACE" in line]
    assert flt.tablespace_statements == 2
    assert len(kept) == len(script.split(b"\n"))  # lines are emptied, never added
    assert set(out.replace(b"\n", b"")) <= set(script)
