"""A KEK of the volume tests' own in the session's moto KMS (tests/keys has its own alias)."""

from __future__ import annotations

import boto3
import pytest

from tests.keys.conftest import aws_env
from tests.support.emulators import Server

__all__ = ["aws_env", "volume_kms"]


@pytest.fixture(scope="session")
def volume_kms(moto: Server) -> tuple[str, str]:
    """(endpoint, key ARN)."""
    kms = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url=moto.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return moto.endpoint, kms.create_key(Description="ebk volume KEK")["KeyMetadata"]["Arn"]
