"""Backends for the storage tests: local, moto (S3), gcp-storage-emulator (GCS), Azurite (Azure).

The emulators are the session fixtures of tests/support/fixtures.py (once per session,
on a free port of 127.0.0.1, only when a test asks); every test gets a fresh bucket.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.backends import Backend, make_backend
from tests.support.emulators import unique

CLOUD = ["s3", "gcs", "azure"]
# The session emulators of tests/support/fixtures.py.
SERVER_FIXTURE = {"s3": "moto", "gcs": "gcs_emulator", "azure": "azurite"}


def backend_for(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    endpoint = ""
    if kind != "local":
        endpoint = request.getfixturevalue(SERVER_FIXTURE[kind]).endpoint
    backend = make_backend(kind, endpoint, unique("ebk"), tmp_path)
    for name in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_SESSION_TOKEN",
        "STORAGE_EMULATOR_HOST",
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
    ):
        monkeypatch.delenv(name, raising=False)
    backend.apply_env(monkeypatch)
    return backend


@pytest.fixture(params=["local", *(pytest.param(k, marks=pytest.mark.slow) for k in CLOUD)])
def any_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    """Every backend, local included (the contract suite); the emulator ones are slow."""
    return backend_for(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=[pytest.param(k, marks=pytest.mark.slow) for k in CLOUD])
def cloud_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    return backend_for(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def s3_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    return backend_for("s3", request, tmp_path, monkeypatch)
