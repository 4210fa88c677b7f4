"""The gate in `ebk backup` / `ebk restore`: require refuses (exit 6) naming the path,
warn logs and goes on, off checks nothing.  PGDATA of the test cluster lives on
the host's plain disk, so it is really unencrypted."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster
from tests.support.refusal import assert_refused


def _env(tmp_path: Path, cluster: PgCluster, policy: str, extra: str = "") -> EbkEnv:
    return make_env(
        tmp_path / "ebk",
        cluster,
        extra=f'\n[preflight]\npolicy = "{policy}"\ncloud = false\n{extra}',
    )


def test_backup_refuses_unencrypted_pgdata_under_require(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    env = _env(tmp_path, pg_cluster, "require")
    proc = env.subprocess("backup", "--type", "physical")
    assert_refused(proc, 6)
    message = proc.stderr
    assert "preflight refused the backup" in message
    assert f"data directory {pg_cluster.data_dir}: unencrypted" in message
    assert "fix: move the data directory to encrypted storage" in message
    assert 'preflight.policy = "warn"' in message  # how to go on knowingly
    assert json.loads(env.run("list", "--json").stdout) == []


def test_backup_goes_on_under_warn_and_logs(pg_cluster: PgCluster, tmp_path: Path) -> None:
    env = _env(tmp_path, pg_cluster, "warn")
    proc = env.subprocess("backup", "--type", "logical", "--json")
    assert proc.returncode == 0, proc.stderr
    warnings = [
        json.loads(line)
        for line in proc.stderr.splitlines()
        if line.startswith("{") and "preflight" in line
    ]
    assert any(
        w["level"] == "warning"
        and w["path"] == str(pg_cluster.data_dir)
        and w["status"] == "unencrypted"
        for w in warnings
    ), proc.stderr
    assert len(json.loads(env.run("list", "--json").stdout)) == 1


def test_policy_off_checks_nothing(pg_cluster: PgCluster, tmp_path: Path) -> None:
    env = _env(tmp_path, pg_cluster, "off")
    proc = env.subprocess("backup", "--type", "logical")
    assert proc.returncode == 0, proc.stderr
    assert "preflight" not in proc.stderr


def test_restore_refuses_unencrypted_target_under_require(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    warn_env = _env(tmp_path, pg_cluster, "warn")
    manifest = json.loads(warn_env.run("backup", "--type", "logical", "--json").stdout)
    strict_config = tmp_path / "strict.toml"  # same repository and key, policy require
    strict_config.write_text(
        warn_env.config_path.read_text().replace('policy = "warn"', 'policy = "require"')
    )
    strict = EbkEnv(warn_env.root, strict_config, warn_env.repo_dir, warn_env.keyfile)
    target = tmp_path / "restore-here"
    result = strict.run("restore", manifest["backup_id"], "--to", str(target), expect=6)
    assert f"restore target {target}: unencrypted" in result.output
    assert "restore into a directory on encrypted storage" in result.output
    assert not target.exists()


def test_preflight_exit_code_and_table(pg_cluster: PgCluster, tmp_path: Path) -> None:
    env = make_env(
        tmp_path / "ebk", pg_cluster, init=False, extra='\n[preflight]\npolicy = "off"\n'
    )
    result = env.run("preflight", expect=6)  # the command reports whatever the policy
    assert result.stdout.splitlines()[0].split()[:4] == ["STATUS", "WHAT", "PATH", "MOUNT"]
    assert "UNENCRYPTED  data directory" in result.stdout
    assert "paths are not proven encrypted" in result.stdout


def test_restore_checks_tablespace_targets_too(
    fresh_cluster: PgCluster, postgres_dir: Path, tmp_path: Path
) -> None:
    from tests.support.postgres import give_to_postgres

    ts_dir = postgres_dir / "ts"
    ts_dir.mkdir()
    give_to_postgres(ts_dir)
    fresh_cluster.psql(f"CREATE TABLESPACE ts LOCATION '{ts_dir}'")
    warn_env = _env(tmp_path, fresh_cluster, "warn")
    manifest = json.loads(warn_env.run("backup", "--type", "physical", "--json").stdout)
    oid = next(o["tablespace_oid"] for o in manifest["objects"] if o["role"] == "tablespace")
    strict_config = tmp_path / "strict.toml"
    strict_config.write_text(
        warn_env.config_path.read_text().replace('policy = "warn"', 'policy = "require"')
    )
    strict = EbkEnv(warn_env.root, strict_config, warn_env.repo_dir, warn_env.keyfile)
    mapped = tmp_path / "ts-restored"
    result = strict.run(
        "restore",
        "latest",
        "--to",
        str(tmp_path / "data"),
        "--tablespace-map",
        f"{oid}={mapped}",
        expect=6,
    )
    assert f"tablespace restore target {mapped}: unencrypted" in result.output
    assert "--tablespace-map OID=DIR" in result.output
    assert not mapped.exists()
