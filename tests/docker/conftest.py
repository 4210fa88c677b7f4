"""Fixtures for tests that need a Docker engine: ``docker_engine``, ``docker_base_image``,
``host_postgres``.

Outside CI a missing piece (not root, no docker.io, no debootstrap, dockerd will not
start, no Debian mirror) skips the test with the reason; under CI (CI=true) it fails it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest


def _load_harness() -> ModuleType:
    # Loaded under a unique name: a bare ``import harness`` could collide with another
    # test folder's harness.py, and a package named ``docker`` with docker-py.
    name = "ebk_docker_harness"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("harness.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


harness = _load_harness()


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail under CI, for a missing piece of the docker test environment."""
    if harness.in_ci():
        pytest.fail(f"docker test environment incomplete (CI=true): {reason}", pytrace=False)
    pytest.skip(f"docker test environment incomplete: {reason}")


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A private dockerd for the whole session (``harness.DockerEngine``)."""
    with contextlib.ExitStack() as stack:
        try:
            engine = stack.enter_context(harness.docker_engine())
        except harness.HarnessUnavailable as exc:
            reason = str(exc)
        else:
            reason = ""
        if reason:
            unavailable(reason)
        yield engine


@pytest.fixture(scope="session")
def docker_base_image(docker_engine: Any) -> str:
    """Tag of the debootstrap-built base image, imported into ``docker_engine``."""
    try:
        return str(harness.ensure_base_image(docker_engine))
    except harness.HarnessUnavailable as exc:
        reason = str(exc)
    unavailable(reason)


@pytest.fixture
def host_postgres() -> Iterator[Any]:
    """A throwaway PostgreSQL 15 on 127.0.0.1 (``harness.HostPostgres``)."""
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(harness.host_postgres())
        except harness.HarnessUnavailable as exc:
            reason = str(exc)
        else:
            reason = ""
        if reason:
            unavailable(reason)
        yield pg
