"""Fixtures shared by every test tier: real PostgreSQL 15, an ebk environment, emulators."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PgCluster, init_cluster, make_postgres_dir

# Session-scoped emulators (moto, gcp-storage-emulator, Azurite, OpenBao) for every tier.
pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One cluster for the session with sample data; tests create their own tables."""
    cluster = init_cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture
def fresh_cluster() -> Iterator[PgCluster]:
    """A cluster of the test's own (tablespaces, destructive scenarios)."""
    cluster = init_cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture
def postgres_dir() -> Iterator[Path]:
    """A temp dir owned by the postgres user (restore targets, tablespaces)."""
    path = make_postgres_dir()
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ebk_env(tmp_path: Path, pg_cluster: PgCluster) -> EbkEnv:
    return make_env(tmp_path / "ebk", pg_cluster)


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read /etc/ebk or the developer's EBK_* variables."""
    for name in list(os.environ):
        if name.startswith("EBK_") and name != "EBK_CACHE_DIR":
            monkeypatch.delenv(name, raising=False)
