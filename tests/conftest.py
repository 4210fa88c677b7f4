"""Fixtures shared by every test tier: real PostgreSQL, an ebk environment, emulators.

PostgreSQL versions: ``pg_cluster``/``fresh_cluster`` are Debian's 15 (the fast
tier); ``pg_build``/``matrix_cluster`` run a test once per major in
EBK_TEST_PG_MAJORS (default 15-18), and every major but 15 is marked ``slow``,
so ``-m "not slow"`` keeps the matrix on 15 and CI runs all four.  Every test
that starts a server gets the ``pg`` marker (``-m "not pg"`` runs without one).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.support.postgres as pg_support
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import (
    DEFAULT_MAJOR,
    PgBuild,
    PgCluster,
    init_cluster,
    make_postgres_dir,
    matrix_majors,
)
from tests.support.postgres import pg_build as build_for_major

# Fixtures that start a server (directly or through another fixture).
PG_FIXTURES = {"pg_cluster", "fresh_cluster", "matrix_cluster", "pg_build", "ebk_env"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pg: starts a real PostgreSQL server (auto-applied)")


def _uses_postgres(item: pytest.Item) -> bool:
    """A fixture from PG_FIXTURES, or a module that imports the cluster helpers."""
    if PG_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    module = getattr(item, "module", None)
    if module is None:
        return False
    helpers = {"init_cluster", "start_existing", "PgCluster"}
    return any(
        getattr(value, "__module__", None) == pg_support.__name__
        and getattr(value, "__name__", "") in helpers
        for value in vars(module).values()
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _uses_postgres(item):
            item.add_marker(pytest.mark.pg)


def _matrix_params() -> list[object]:
    return [
        pytest.param(
            major,
            id=f"pg{major}",
            marks=() if major == DEFAULT_MAJOR else (pytest.mark.slow,),
        )
        for major in matrix_majors()
    ]


@pytest.fixture(scope="module", params=_matrix_params())
def pg_build(request: pytest.FixtureRequest) -> PgBuild:
    """Each PostgreSQL major of the matrix in turn (module scope: one server each)."""
    return build_for_major(int(request.param)).require()


@pytest.fixture(scope="module")
def matrix_cluster(pg_build: PgBuild) -> Iterator[PgCluster]:
    """A running server of the matrix's current major, shared by the module's tests."""
    cluster = init_cluster(bin_dir=pg_build.bin_dir)
    yield cluster
    cluster.destroy()


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
def _no_ambient_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Tests never read /etc/ebk or the developer's EBK_* variables, nor share ~/.cache/ebk."""
    for name in list(os.environ):
        if name.startswith("EBK_") and name != "EBK_CACHE_DIR":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
