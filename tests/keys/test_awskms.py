"""AWS KMS against moto's server (a real HTTP KMS endpoint; moto ignores disabled keys)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from ebk.config import AwsKmsConfig
from ebk.errors import KeyAccessDenied, KeyProviderUnavailable, WrongKey
from ebk.keys.awskms import AwsKmsProvider
from ebk.keys.recovery import write_identity_file
from tests.keys.conftest import MotoKms
from tests.support.ebkenv import kms_env, stored_files
from tests.support.net import free_port
from tests.support.postgres import PgCluster

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("aws_env")]

CTX = {"backup_id": "20261128T000000Z-aaaaaa", "cluster": "7300000000000000001", "dek_id": "dek-1"}
CONTENT = "SELECT count(*) || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM t"


def provider(kms: MotoKms, key_id: str, previous: tuple[str, ...] = ()) -> AwsKmsProvider:
    return AwsKmsProvider(
        AwsKmsConfig(
            key_id=key_id,
            region="us-east-1",
            endpoint_url=kms.endpoint,
            retries=0,
            previous_key_ids=list(previous),
        )
    )


def awskms_toml(endpoint: str, key_id: str, recipients: tuple[str, ...] = ()) -> str:
    rec = ", ".join(f'"{r}"' for r in recipients)
    return (
        f'[keys]\nprovider = "awskms"\nrecovery_recipients = [{rec}]\n\n'
        f'[awskms]\nkey_id = "{key_id}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{endpoint}"\ntimeout = 2.0\nretries = 1\n'
    )


def test_round_trip_by_alias_wrong_context_and_wrong_key(moto_kms: MotoKms) -> None:
    kms = provider(moto_kms, moto_kms.alias)
    dek = secrets.token_bytes(32)
    slot = kms.wrap(dek, CTX)
    assert slot.provider == "awskms" and slot.kek_id == moto_kms.key_arn  # the ARN, not the alias
    assert dek not in slot.ciphertext
    assert kms.unwrap(slot, CTX) == dek
    with pytest.raises(WrongKey, match="another backup"):
        kms.unwrap(slot, {**CTX, "backup_id": "20261128T000001Z-bbbbbb"})
    # the slot claims another key: refused before KMS is asked (finding 4 of issue 10)
    with pytest.raises(WrongKey, match="does not allow"):
        kms.unwrap(type(slot)(slot.provider, moto_kms.other_arn, slot.ciphertext), CTX)
    with pytest.raises(KeyAccessDenied, match="does not exist"):
        provider(moto_kms, "alias/missing").wrap(dek, CTX)


def test_rewrap_moves_the_slot_to_the_configured_key(moto_kms: MotoKms) -> None:
    dek = secrets.token_bytes(32)
    slot = provider(moto_kms, moto_kms.key_arn).wrap(dek, CTX)
    # The old key must be allowed explicitly to be rewrapped from.
    with pytest.raises(WrongKey, match="does not allow"):
        provider(moto_kms, moto_kms.other_arn).rewrap(slot, CTX)
    moved = provider(moto_kms, moto_kms.other_arn, (moto_kms.alias,)).rewrap(slot, CTX)
    assert moved.kek_id == moto_kms.other_arn
    assert provider(moto_kms, moto_kms.other_arn).unwrap(moved, CTX) == dek


def test_a_slot_naming_a_foreign_key_is_refused(moto_kms: MotoKms) -> None:
    """Finding 4: the attacker wraps a data key of their choice with a key they own (one
    that trusts ebk's role) and names it in the slot; ebk never asks that key."""
    chosen = secrets.token_bytes(32)
    foreign = provider(moto_kms, moto_kms.other_arn).wrap(chosen, CTX)
    assert foreign.kek_id == moto_kms.other_arn
    with pytest.raises(WrongKey, match="does not allow") as refused:
        provider(moto_kms, moto_kms.alias).unwrap(foreign, CTX)
    assert refused.value.exit_code == 3


def test_logical_round_trip_through_the_cli(
    moto_kms: MotoKms, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    recipient = write_identity_file(tmp_path / "recovery.txt")
    env = kms_env(
        tmp_path / "ebk", pg_cluster, awskms_toml(moto_kms.endpoint, moto_kms.alias, (recipient,))
    )
    pg_cluster.psql("DROP DATABASE IF EXISTS kms_aws")
    pg_cluster.psql("CREATE DATABASE kms_aws")
    pg_cluster.psql(
        "CREATE TABLE t (id int primary key, v text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 3000) g",
        db="kms_aws",
    )
    expected = pg_cluster.psql(CONTENT, db="kms_aws")
    try:
        check = json.loads(env.run("keys", "check", "--json").stdout)
        assert [p["provider"] for p in check["providers"]] == ["awskms", "recovery"]
        manifest = json.loads(
            env.run("backup", "--type", "logical", "--database", "kms_aws", "--json").stdout
        )
        assert manifest["key_slots"] == [f"awskms/{moto_kms.key_arn}", f"recovery/{recipient}"]
        env.run(
            "restore",
            manifest["backup_id"],
            "--to-db",
            "kms_aws_copy",
            "--database",
            "kms_aws",
            "--create",
        )
        assert pg_cluster.psql(CONTENT, db="kms_aws_copy") == expected
    finally:
        pg_cluster.psql("DROP DATABASE IF EXISTS kms_aws")
        pg_cluster.psql("DROP DATABASE IF EXISTS kms_aws_copy")


def test_kms_unreachable_refuses_backup_and_writes_nothing(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    env = kms_env(
        tmp_path / "ebk", pg_cluster, awskms_toml(f"http://127.0.0.1:{free_port()}", "alias/ebk")
    )
    before = stored_files(env)
    result = env.run("backup", "--type", "logical", expect=3)
    assert "AWS KMS is unreachable" in result.output
    assert stored_files(env) == before
    with pytest.raises(KeyProviderUnavailable):
        AwsKmsProvider(
            AwsKmsConfig(
                key_id="alias/ebk",
                region="us-east-1",
                endpoint_url=f"http://127.0.0.1:{free_port()}",
                retries=0,
            )
        ).wrap(b"k" * 32, CTX)
