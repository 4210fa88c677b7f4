"""Session-scoped emulator fixtures for every test tier (a pytest plugin: tests/conftest.py).

Each server starts once per session, only when a test asks for it, on a free port of
127.0.0.1, and is stopped at the end; tests share it and keep apart by using their
own buckets, keys or volumes.  Launchers: tests/support/emulators.py, openbao.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.emulators import Server, run_azurite, run_gcs_emulator, run_moto
from tests.support.openbao import EBK_POLICY, Bao, run_openbao


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """moto's server (S3, KMS, EC2, IAM), no authentication."""
    with run_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_gcs_emulator(tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """The shared OpenBao with transit keys and the ebk policy: tests only add to it
    (no seal, no stop); ``own_openbao`` is for those that do."""
    with run_openbao(tmp_path_factory.mktemp("openbao")) as bao:
        (bao.root / "ebk.hcl").write_text(EBK_POLICY)
        bao.bao("policy", "write", "ebk", str(bao.root / "ebk.hcl"))
        yield bao


@pytest.fixture
def own_openbao(tmp_path: Path) -> Iterator[Bao]:
    """An OpenBao of the test's own, for sealing and stopping it."""
    with run_openbao(tmp_path / "openbao") as bao:
        yield bao
