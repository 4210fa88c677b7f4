"""The docker harness itself: a private engine, the debootstrap base image, and a
host-network container reaching a PostgreSQL on the host's loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.docker_image import (
    DEFAULT_MIRROR,
    DEFAULT_SECURITY_MIRROR,
    apt_mirrors,
)
from tests.support.postgres import PgCluster


@pytest.mark.docker
def test_base_image_runs(docker_engine: Any, docker_base_image: str) -> None:
    out = docker_engine.run("run", "--rm", docker_base_image, "cat", "/etc/debian_version")
    assert out.stdout.strip().startswith("12."), out.stdout


@pytest.mark.docker
@pytest.mark.timeout(1200)
def test_host_network_container_reaches_host_postgres(
    docker_engine: Any, docker_base_image: str, host_postgres: PgCluster
) -> None:
    tag = "ebk-test-pgclient:latest"
    docker_engine.build(
        tag=tag,
        context=None,
        dockerfile_text=(
            f"FROM {docker_base_image}\n"
            "RUN apt-get update"
            " && apt-get install -y --no-install-recommends postgresql-client-15"
            " && rm -rf /var/lib/apt/lists/*\n"
        ),
    )
    pg = host_postgres
    conn = ["-h", pg.host, "-p", str(pg.port), "-U", "postgres"]
    docker_engine.run_container(
        tag,
        "psql",
        *conn,
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        "postgres",
        "-c",
        "CREATE TABLE harness_probe (id int); INSERT INTO harness_probe VALUES (42);",
    )
    dump = docker_engine.run_container(tag, "pg_dump", *conn, "-d", "postgres").stdout
    assert "CREATE TABLE public.harness_probe" in dump
    assert "42" in dump
    version = docker_engine.run_container(tag, "pg_dump", "--version").stdout
    assert "pg_dump (PostgreSQL) 15." in version


def test_apt_mirrors_reads_deb822_and_one_line_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EBK_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("EBK_DEBIAN_SECURITY_MIRROR", raising=False)
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://ignored.example/debian bookworm main\n"
        "deb [arch=amd64] https://packages.example/apt cloud-sdk-bookworm main\n"
    )
    (d / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert apt_mirrors(tmp_path) == (
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    )
    (d / "debian.sources").unlink()
    assert apt_mirrors(tmp_path) == (
        DEFAULT_MIRROR,
        DEFAULT_SECURITY_MIRROR,
    )
    monkeypatch.setenv("EBK_DEBIAN_MIRROR", "http://other.example/debian")
    assert apt_mirrors(tmp_path)[0] == "http://other.example/debian"
