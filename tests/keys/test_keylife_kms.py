"""The KEK lifecycle against OpenBao Transit and moto's KMS: rotate, rewrap, retire.

One real logical backup per provider is restored after each step; synthetic backups
(tests/keys/synthetic.py) make the count, and every data key is proven to open.
moto's KMS records RotateKeyOnDemand and ListKeyRotations but keeps the same key
material, and reports no RotationPeriodInDays: what rotation inside one KMS key
changes cryptographically is AWS's to prove, not this test's.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from tests.keys.conftest import MotoKms
from tests.keys.synthetic import add_backups
from tests.keys.test_awskms import awskms_toml
from tests.keys.test_keylife import all_open, runtime, status
from tests.support.ebkenv import EbkEnv, kms_env
from tests.support.openbao import EBK_POLICY, Bao, vault_toml
from tests.support.postgres import PgCluster

pytestmark = pytest.mark.slow


def real_backup(env: EbkEnv, cluster: PgCluster, db: str) -> str:
    cluster.psql(f"DROP DATABASE IF EXISTS {db}")
    cluster.psql(f"CREATE DATABASE {db}")
    cluster.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50) g", db=db)
    out = env.run("backup", "--type", "logical", "--database", db, "--json").stdout
    return str(json.loads(out)["backup_id"])


def restores(env: EbkEnv, cluster: PgCluster, backup_id: str, db: str) -> None:
    cluster.psql(f"DROP DATABASE IF EXISTS {db}_copy")
    env.run("restore", backup_id, "--to-db", f"{db}_copy", "--database", db, "--create")
    assert cluster.psql("SELECT count(*) FROM t", db=f"{db}_copy") == "50"


def set_keys(env: EbkEnv, line: str) -> None:
    env.config_path.write_text(env.config_path.read_text().replace("[keys]\n", f"[keys]\n{line}\n"))


def test_transit_rotate_rewrap_retire(openbao: Bao, pg_cluster: PgCluster, tmp_path: Path) -> None:
    openbao.bao("write", "-f", "transit/keys/life", "derived=true")
    env = kms_env(tmp_path / "ebk", pg_cluster, vault_toml(openbao, key="life"))
    try:
        real = real_backup(env, pg_cluster, "life_src")
        deks = add_backups(runtime(env), 5)
        first = status(env)
        assert first["current_version"] == "transit/life:v1"
        assert first["versions"][0]["backups"] == 6 and "auto_rotate_period" in first["notes"][0]

        env.run("keys", "rotate")
        before = len(openbao.transit_requests())
        assert "re-wrapped 0 backup(s)" in env.run("keys", "rewrap").output  # idempotent
        assert "transit/encrypt/life" not in openbao.transit_requests()[before:]
        after = status(env)
        counts = {v["version"]: v["backups"] for v in after["versions"]}
        assert counts == {"transit/life:v1": 0, "transit/life:v2": 6}
        assert after["versions"][1]["writer_key"] and after["pending_rewrap"] == 0
        set_keys(env, 'retire_after = "0s"')
        assert "min_decryption_version = 2" in env.run("keys", "retire").output
        retired = status(env)
        assert not retired["versions"][0]["usable"] and retired["ok"]
        restores(env, pg_cluster, real, "life_src")
        all_open(env, deks)

        # retire before rewrap: the old version is refused, by name
        env.run("keys", "rotate", "--no-rewrap")
        assert status(env)["pending_rewrap"] == 6
        openbao.bao("write", "transit/keys/life/config", "min_decryption_version=3")
        failed = env.run(
            "restore", real, "--to-db", "x_copy", "--database", "life_src", "--create", expect=3
        )
        assert "transit/life:v2" in failed.output and "retired" in failed.output
        assert "transit/life:v2" in env.run("keys", "status", expect=3).output
        openbao.bao("write", "transit/keys/life/config", "min_decryption_version=2")
        env.run("keys", "rewrap")
        env.run("keys", "retire")
        restores(env, pg_cluster, real, "life_src")
        all_open(env, deks)
        kinds = [e["kind"] for e in json.loads(env.run("keys", "log", "--json").stdout)]
        assert kinds == ["rotate", "rewrap", "rewrap", "retire", "rotate", "rewrap", "retire"]
    finally:
        pg_cluster.psql("DROP DATABASE IF EXISTS life_src")
        pg_cluster.psql("DROP DATABASE IF EXISTS life_src_copy")


def test_kms_rotate_on_demand_then_move_to_a_new_key(
    moto_kms: MotoKms, aws_env: None, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_kms.endpoint)
    key_a = kms.create_key(Description="lifecycle A")["KeyMetadata"]["Arn"]
    key_b = kms.create_key(Description="lifecycle B")["KeyMetadata"]["Arn"]
    env = kms_env(tmp_path / "ebk", pg_cluster, awskms_toml(moto_kms.endpoint, key_a))
    try:
        real = real_backup(env, pg_cluster, "kmslife_src")
        deks = add_backups(runtime(env), 4)
        version = status(env)["versions"][0]
        assert (version["version"], version["backups"], version["current"]) == (key_a, 5, True)
        out = env.run("keys", "rotate").output
        assert "re-wrapped 5 backup(s)" in out  # same ARN: every slot is re-encrypted
        assert status(env)["age_seconds"] < 600

        # a new key named in the config; the old one stays readable until retired
        env.config_path.write_text(
            env.config_path.read_text().replace(
                f'key_id = "{key_a}"', f'key_id = "{key_b}"\nprevious_key_ids = ["{key_a}"]'
            )
        )
        assert status(env)["pending_rewrap"] == 5
        env.run("keys", "rewrap")
        moved = status(env)
        assert {v["version"]: v["backups"] for v in moved["versions"]} == {key_a: 0, key_b: 5}
        set_keys(env, 'retire_after = "0s"')
        retire = env.run("keys", "retire").output
        assert "schedule-key-deletion" in retire and key_a in retire
        assert kms.describe_key(KeyId=key_a)["KeyMetadata"]["KeyState"] == "Enabled"
        restores(env, pg_cluster, real, "kmslife_src")
        all_open(env, deks)

        # retire before rewrap: dropping the old key from the config strands its backups
        # (the writer key pinned, as docs/key-management.md advises, so listing still works)
        writer = env.run("keys", "writer-key").stdout.strip()
        key_c = kms.create_key(Description="lifecycle C")["KeyMetadata"]["Arn"]
        text = env.config_path.read_text().replace(
            f'key_id = "{key_b}"\nprevious_key_ids = ["{key_a}"]', f'key_id = "{key_c}"'
        )
        env.config_path.write_text(
            text.replace("[repository]\n", f'[repository]\nwriter_keys = ["{writer}"]\n')
        )
        failed = env.run(
            "restore", real, "--to-db", "y_copy", "--database", "kmslife_src", "--create", expect=3
        )
        assert key_b in failed.output
        report = json.loads(env.run("keys", "status", "--json", expect=3).stdout)
        assert len(report["stranded"]) == 5 and report["unknown_versions"] == {key_b: 5}
    finally:
        pg_cluster.psql("DROP DATABASE IF EXISTS kmslife_src")
        pg_cluster.psql("DROP DATABASE IF EXISTS kmslife_src_copy")


def test_transit_least_privilege_rewraps_but_cannot_read_status(
    openbao: Bao, tmp_path: Path
) -> None:
    openbao.bao("write", "-f", "transit/keys/lp", "derived=true")
    policy = tmp_path / "lp.hcl"
    policy.write_text(EBK_POLICY.replace('/ebk"', '/lp"'))
    openbao.bao("policy", "write", "lp", str(policy))
    token = openbao.bao("token", "create", "-policy=lp", "-field=token").strip()
    toml = vault_toml(openbao, key="lp", token_file=openbao.token_file(token))
    env = kms_env(tmp_path / "ebk", None, toml)
    deks = add_backups(runtime(env), 3)
    denied = env.run("keys", "status", expect=3)
    assert "'read' on transit/keys/lp" in denied.output
    assert "'update' on transit/keys/lp/rotate" in env.run("keys", "rotate", expect=3).output
    openbao.bao("write", "-f", "transit/keys/lp/rotate")  # an admin, or auto_rotate_period
    out = env.run("keys", "rewrap").output
    assert "re-wrapped 3 backup(s) under transit/lp:v2" in out
    all_open(env, deks)
