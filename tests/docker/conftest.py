"""Fixtures for tests that need a Docker engine: ``docker_engine``, ``docker_base_image``,
``host_postgres``.

Outside CI a missing piece (not root, no docker.io, no debootstrap, dockerd will not
start, no Debian mirror) skips the test with the reason; under CI (CI=true) it fails it
(tests.support.needs.skip_or_fail).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.support.docker_engine import DockerEngine, HarnessUnavailable, docker_engine
from tests.support.docker_image import ensure_base_image
from tests.support.needs import skip_or_fail
from tests.support.postgres import PgCluster, init_cluster


@pytest.fixture(scope="session", name="docker_engine")
def docker_engine_fixture() -> Iterator[DockerEngine]:
    """A private dockerd for the whole session."""
    with contextlib.ExitStack() as stack:
        try:
            engine = stack.enter_context(docker_engine())
        except HarnessUnavailable as exc:
            skip_or_fail(f"docker test environment incomplete: {exc}")
        yield engine


@pytest.fixture(scope="session")
def docker_base_image(docker_engine: DockerEngine) -> str:
    """Tag of the debootstrap-built base image, imported into ``docker_engine``."""
    try:
        return ensure_base_image(docker_engine)
    except HarnessUnavailable as exc:
        skip_or_fail(f"docker test environment incomplete: {exc}")


@pytest.fixture
def host_postgres() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL on 127.0.0.1 (tests.support.postgres); containers on
    ``--network host`` reach it."""
    cluster = init_cluster()
    yield cluster
    cluster.destroy()
