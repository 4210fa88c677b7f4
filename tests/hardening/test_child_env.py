"""Finding 9 (issue 10): child processes never see ebk's secrets.

Real PostgreSQL that requires a password (scram-sha-256), and ebk running
with KMS and cloud secrets in its environment.  postgres.bin_dir points at
wrapper scripts that record the environment they were started with (and the
mode of the PGPASSFILE they were given), then exec the real pg_dump,
pg_dumpall, psql and pg_restore: exactly what /proc/<pid>/environ of the
real tool shows, since exec keeps the environment.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebk.childenv import child_env, password_file
from tests.support.ebkenv import EbkEnv
from tests.support.postgres import PG_BIN, PgCluster, init_cluster

PASSWORD = "pw:with\\odd-chars-7c1e"
SECRETS = {
    "PGPASSWORD": "ambient-pgpassword-0b44",
    "VAULT_TOKEN": "hvs.vault-token-91af",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-55d2",
    "AWS_SESSION_TOKEN": "aws-session-e310",
    "AZURE_STORAGE_KEY": "azure-key-77aa",
    "GOOGLE_APPLICATION_CREDENTIALS": "/secret/gcp-3b9d.json",
    "EBK_TEST_SECRET": "ebk-secret-c0de",
}
TOOLS = ("pg_dump", "pg_dumpall", "psql", "pg_restore")


def _wrappers(bin_dir: Path, record_dir: Path) -> None:
    bin_dir.mkdir()
    for tool in TOOLS:
        script = bin_dir / tool
        script.write_text(
            "#!/bin/sh\n"
            f'out="{record_dir}/{tool}.$$"\n'
            'if [ "$1" = "--version" ]; then out="$out.version"; fi\n'
            'env > "$out.env"\n'
            'if [ -n "$PGPASSFILE" ]; then\n'
            '  stat -c %a "$PGPASSFILE" > "$out.filemode"\n'
            '  stat -c %a "$(dirname "$PGPASSFILE")" > "$out.dirmode"\n'
            "fi\n"
            f'exec "{PG_BIN}/{tool}" "$@"\n'
        )
        script.chmod(0o755)


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[PgCluster]:
    cluster = init_cluster()
    try:
        cluster.psql(f"CREATE ROLE ebk_pw SUPERUSER LOGIN PASSWORD '{PASSWORD}'")
        cluster.psql("CREATE DATABASE appdb")
        cluster.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 500) g", db="appdb")
        # The test's own psql (user postgres) stays trusted; ebk's role needs its password.
        (cluster.data_dir / "pg_hba.conf").write_text(
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
        )
        cluster.psql("SELECT pg_reload_conf()")
        yield cluster
    finally:
        cluster.destroy()


def _env_for(cluster: PgCluster, root: Path, bin_dir: Path) -> EbkEnv:
    pwfile = root / "pgpassword"
    root.mkdir(parents=True)
    pwfile.write_text(PASSWORD + "\n")
    pwfile.chmod(0o600)
    section = (
        f'[postgres]\nhost = "{cluster.host}"\nport = {cluster.port}\nuser = "ebk_pw"\n'
        f'bin_dir = "{bin_dir}"\npassword_file = "{pwfile}"\n'
    )
    config = root / "ebk.toml"
    repo, keyfile = root / "repo", root / "kek.json"
    config.write_text(
        f'[repository]\nurl = "file://{repo}"\n\n[keys]\nprovider = "keyfile"\n'
        f'keyfile = "{keyfile}"\n\n[log]\nformat = "json"\n\n' + section
    )
    env = EbkEnv(root, config, repo, keyfile)
    env.run("init")
    return env


def test_backup_and_restore_children_get_no_secret(
    password_cluster: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    _wrappers(tmp_path / "bin", records)
    env = _env_for(password_cluster, tmp_path / "ebk", tmp_path / "bin")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)

    bid = env.run("backup", "--type", "logical", "--json").stdout
    backup_id = __import__("json").loads(bid)["backup_id"]
    env.run(
        "restore",
        backup_id,
        "--to-db",
        "appcopy",
        "--database",
        "appdb",
        "--create",
        "--with-globals",
    )
    assert password_cluster.psql("SELECT count(*) FROM t", db="appcopy") == "500"

    seen = {p.name.split(".")[0] for p in records.glob("*.env")}
    assert seen == set(TOOLS), seen
    for record in records.glob("*.env"):
        text = record.read_text()
        if ".version." in record.name:  # ebk asking a tool its version: no PG settings at all
            assert not any(v in text for v in [*SECRETS.values(), PASSWORD]), record.name
            continue
        names = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
        for value in [*SECRETS.values(), PASSWORD]:
            assert value not in text, (record.name, value)
        assert not {
            n for n in names if n.startswith(("VAULT_", "AWS_", "AZURE_", "GOOGLE_", "EBK_"))
        }, names
        assert "PGPASSWORD" not in names
        assert "PGUSER=ebk_pw" in text.splitlines()
        passfile = next(
            v
            for n, v in (ln.split("=", 1) for ln in text.splitlines() if "=" in ln)
            if n == "PGPASSFILE"
        )
        stem = record.name.removesuffix(".env")
        assert (records / f"{stem}.filemode").read_text().strip() == "600"
        assert (records / f"{stem}.dirmode").read_text().strip() == "700"
        assert not Path(passfile).exists(), "the private password file outlived the child"
        assert not Path(passfile).parent.exists()


def test_wrong_password_fails_cleanly_without_leaking(
    password_cluster: PgCluster, tmp_path: Path
) -> None:
    """A wrong password is PostgreSQL's refusal (exit 7) and the message holds no secret."""
    records = tmp_path / "records"
    records.mkdir()
    _wrappers(tmp_path / "bin", records)
    env = _env_for(password_cluster, tmp_path / "ebk", tmp_path / "bin")
    (env.root / "pgpassword").write_text("not-the-password-4f1d\n")
    result = env.run("backup", "--type", "logical", "--database", "appdb", expect=7)
    assert "Traceback" not in result.output
    assert "not-the-password-4f1d" not in result.output


def test_allow_list_drops_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    env = child_env({"PGHOST": "db"}, libpq=True)
    assert not set(SECRETS) & set(env)
    assert env["LC_ALL"] == "C.UTF-8" and env["PGSSLMODE"] == "verify-full"
    assert env["PGHOST"] == "db" and "PATH" in env
    assert "PGSSLMODE" not in child_env()
    with pytest.raises(ValueError):
        child_env({"PGPASSWORD": "x"})


def test_password_file_is_private_and_removed() -> None:
    with password_file("a:b\\c") as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.read_text() == "*:*:*:*:a\\:b\\\\c\n"
        assert path.stat().st_uid == os.geteuid()
    assert not path.exists() and not path.parent.exists()
