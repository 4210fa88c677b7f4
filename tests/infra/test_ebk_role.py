"""The backup role of infra/ works on a real PostgreSQL 15, with no more privilege.

The Kubernetes initdb script (the postgres-initdb ConfigMap) runs as the postgres image
would source it, against a fresh cluster; then ebk authenticates as `ebk` with SCRAM
and takes a physical and a logical backup (a table with row-level security included),
and the role is shown unable to write.  The Compose README's pipeline (printf | psql)
re-runs the same SQL with a new password.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from tests.infra.manifests import K8S, ROLE_SQL
from tests.support.ebkenv import make_env
from tests.support.postgres import PG_BIN, PgCluster
from tests.support.refusal import assert_refused


def _initdb_script() -> str:
    cm = yaml.safe_load((K8S / "postgres-initdb-configmap.yaml").read_text())
    return str(cm["data"]["10-ebk-role.sh"])


def _psql_as(
    cluster: PgCluster, user: str, password: str, sql: str
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PGPASSWORD=password, PGCONNECT_TIMEOUT="10")
    return subprocess.run(
        [
            str(PG_BIN / "psql"),
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            cluster.host,
            "-p",
            str(cluster.port),
            "-U",
            user,
            "-d",
            "postgres",
            "-Atc",
            sql,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def _require_scram_for_ebk(cluster: PgCluster) -> None:
    """The test cluster trusts loopback; ebk's lines go first so its password is checked."""
    hba = cluster.data_dir / "pg_hba.conf"
    lines = (
        "host all ebk 127.0.0.1/32 scram-sha-256\nhost replication ebk 127.0.0.1/32 scram-sha-256\n"
    )
    hba.write_text(lines + hba.read_text())
    cluster.psql("SELECT pg_reload_conf()")


def test_initdb_script_creates_a_least_privileged_role_that_backs_up(
    fresh_cluster: PgCluster, tmp_path: Path
) -> None:
    secret = tmp_path / "ebk-password"
    secret.write_text("s3cr3t-From-The-Secret+/=\n")  # base64 alphabet, trailing newline
    script = (
        _initdb_script()
        .replace("/etc/postgres-credentials/ebk-password", str(secret))
        .replace("/etc/ebk-initdb/ebk-role.sql", str(ROLE_SQL))
    )
    env = dict(
        os.environ,
        PATH=f"{PG_BIN}:{os.environ['PATH']}",
        POSTGRES_USER="postgres",
        PGDATA=str(fresh_cluster.data_dir),
        PGHOST=fresh_cluster.host,
        PGPORT=str(fresh_cluster.port),
    )
    # The image's entrypoint sources init scripts under `set -Eeo pipefail`.
    proc = subprocess.run(
        ["bash", "-c", "set -Eeo pipefail; . /dev/stdin"],
        input=script,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    hba = (fresh_cluster.data_dir / "pg_hba.conf").read_text()
    assert hba.rstrip().endswith("host replication ebk all scram-sha-256")

    attrs = fresh_cluster.psql(
        "SELECT rolcanlogin, rolreplication, rolbypassrls, rolsuper, rolcreatedb, "
        "rolcreaterole, rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname='ebk'"
    )
    assert attrs == "t|t|t|f|f|f|t"
    members = fresh_cluster.psql(
        "SELECT string_agg(r.rolname, ',' ORDER BY r.rolname) FROM pg_auth_members m "
        "JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member "
        "WHERE u.rolname = 'ebk'"
    )
    assert members == "pg_read_all_data,pg_read_all_settings"

    _require_scram_for_ebk(fresh_cluster)
    # psql's own exit codes: 2 = the connection failed, 1 = the statement failed
    assert_refused(
        _psql_as(fresh_cluster, "ebk", "wrong", "SELECT 1"),
        2,
        mentions="password authentication failed",
    )
    assert _psql_as(fresh_cluster, "ebk", "s3cr3t-From-The-Secret+/=", "SELECT 1").stdout == "1\n"

    # Least privilege: it reads, it never writes.
    fresh_cluster.psql(
        "CREATE TABLE acct (id int primary key, owner text);"
        "INSERT INTO acct SELECT g, 'u' || g FROM generate_series(1, 500) g;"
        "ALTER TABLE acct ENABLE ROW LEVEL SECURITY;"
        "CREATE POLICY own ON acct USING (owner = current_user)"
    )
    for sql in (
        "INSERT INTO acct VALUES (1000, 'x')",
        "CREATE TABLE t2 (i int)",
        "CREATE DATABASE nope",
        "ALTER SYSTEM SET work_mem = '1GB'",
    ):
        denied = _psql_as(fresh_cluster, "ebk", "s3cr3t-From-The-Secret+/=", sql)
        assert_refused(denied, 1, mentions="permission denied")

    password_file = tmp_path / "pw"
    password_file.write_text("s3cr3t-From-The-Secret+/=\n")
    password_file.chmod(0o600)
    env_ebk = make_env(tmp_path / "ebk", fresh_cluster)
    config = env_ebk.config_path.read_text().replace(
        'user = "postgres"', f'user = "ebk"\npassword_file = "{password_file}"'
    )
    env_ebk.config_path.write_text(config)
    physical = json.loads(env_ebk.run("backup", "--type", "physical", "--json").stdout)
    assert physical["kind"] == "physical" and physical["stop_lsn"]
    logical = json.loads(env_ebk.run("backup", "--type", "logical", "--json").stdout)
    assert logical["kind"] == "logical"
    listed = json.loads(env_ebk.run("list", "--json").stdout)
    assert {b["backup_id"] for b in listed} >= {physical["backup_id"], logical["backup_id"]}

    # The Compose README's way, run again: idempotent, and it changes the password.
    new_password = tmp_path / "pw2"
    new_password.write_text("another-one\n")
    readme_pipeline = (
        'set -Eeo pipefail; { printf "\\\\set ebk_password \'%s\'\\n" "$(cat "$1")"; '
        'cat "$2"; } | psql -X -v ON_ERROR_STOP=1 -U postgres -d postgres -q'
    )
    rerun = subprocess.run(
        ["bash", "-c", readme_pipeline, "sh", str(new_password), str(ROLE_SQL)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert _psql_as(fresh_cluster, "ebk", "another-one", "SELECT 1").stdout == "1\n"
    assert _psql_as(fresh_cluster, "ebk", "s3cr3t-From-The-Secret+/=", "SELECT 1").returncode
