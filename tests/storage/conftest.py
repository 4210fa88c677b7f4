"""Emulators for the storage tests: moto (S3), gcp-storage-emulator (GCS), Azurite (Azure).

Each server starts once per session, on a free port of 127.0.0.1, and only
when a test asks for it; every test gets a fresh bucket.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.backends import Backend, make_backend
from tests.storage.servers import (
    Server,
    azurite_argv,
    gcs_argv,
    moto_argv,
    run_server,
    unique,
)
from tests.support.net import free_port


def faithful_gcs_argv(port: int) -> list[str]:
    """The GCS emulator through tests/storage/gcs_faithful.py (preconditions, paged lists)."""
    argv = gcs_argv(port)
    return [sys.executable, str(Path(__file__).with_name("gcs_faithful.py")), *argv[1:]]


ARGV = {"s3": moto_argv, "gcs": faithful_gcs_argv, "azure": azurite_argv}
CLOUD = ["s3", "gcs", "azure"]


def _server(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    argv = ARGV[kind](port)
    with run_server(kind, argv, port, tmp_path_factory.mktemp(kind)) as server:
        yield server


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server("s3", tmp_path_factory)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server("gcs", tmp_path_factory)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server("azure", tmp_path_factory)


SERVER_FIXTURE = {"s3": "moto", "gcs": "gcs_emulator", "azure": "azurite"}


def backend_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Backend:
    endpoint = ""
    if kind != "local":
        endpoint = request.getfixturevalue(SERVER_FIXTURE[kind]).endpoint
    backend = make_backend(kind, endpoint, unique("ebk"), tmp_path)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN",
                 "STORAGE_EMULATOR_HOST", "AZURE_STORAGE_CONNECTION_STRING",
                 "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    backend.apply_env(monkeypatch)
    return backend


@pytest.fixture(params=["local", *(pytest.param(k, marks=pytest.mark.slow) for k in CLOUD)])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Backend:
    """Every backend, local included (the contract suite); the emulator ones are slow."""
    return backend_for(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=[pytest.param(k, marks=pytest.mark.slow) for k in CLOUD])
def cloud_backend(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Backend:
    return backend_for(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def s3_backend(request: pytest.FixtureRequest, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Backend:
    return backend_for("s3", request, tmp_path, monkeypatch)
