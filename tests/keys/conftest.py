"""Fixtures of the key-provider tests: moto's KMS with two KEKs, static AWS credentials.

The servers (OpenBao, moto) come from the shared launchers in tests/support/.
"""

from __future__ import annotations

from dataclasses import dataclass

import boto3
import pytest

from tests.support.emulators import Server


@dataclass
class MotoKms:
    endpoint: str
    key_arn: str
    other_arn: str
    alias: str = "alias/ebk"

    def client(self) -> object:
        return boto3.client(
            "kms",
            region_name="us-east-1",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@pytest.fixture(scope="session")
def moto_kms(moto: Server) -> MotoKms:
    """Two KEKs and an alias in the session's moto (tests/support/fixtures.py)."""
    kms = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url=moto.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key = kms.create_key(Description="ebk test KEK")["KeyMetadata"]["Arn"]
    other = kms.create_key(Description="another KEK")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/ebk", TargetKeyId=key)
    return MotoKms(moto.endpoint, key, other)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static test credentials for moto; no AWS profile or instance role is consulted."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
