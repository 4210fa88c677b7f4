"""The production Dockerfile: it builds on the debootstrap base, its container runs as
a non-root user and backs up a PostgreSQL 15 on the host, and the host restores what
the container stored.

The image is built once per session (``ebk_image``).  Containers use ``--network host``
(the harness's dockerd has no bridge) and see the test's config, key file and local
repository at the same paths as the host, so one config file serves both sides.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.docker_engine import REPO
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.net import free_port
from tests.support.postgres import PgCluster, start_existing
from tests.support.refusal import assert_refused

pytestmark = pytest.mark.docker

TAG = "ebk:test"
# 296 MB today (base 75, python3 + postgresql-client-15 106, venv 115): a budget that
# fails on a lost --no-install-recommends, uncleaned apt lists or a build toolchain
# leaking into the runtime stage.
SIZE_BUDGET = 350_000_000
CONTENT_SQL = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    build_seconds: float
    size: int
    uid: int
    gid: int


@pytest.fixture(scope="session")
def ebk_image(
    docker_engine: Any, docker_base_image: str, request: pytest.FixtureRequest
) -> BuiltImage:
    """The top-level Dockerfile built on ``ebk-base:bookworm``, once per session."""
    t0 = time.monotonic()
    docker_engine.build(
        tag=TAG,
        dockerfile=REPO / "Dockerfile",
        build_args={"BASE_IMAGE": docker_base_image},
    )
    seconds = time.monotonic() - t0
    size = int(docker_engine.run("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    ids = docker_engine.run_container(TAG, "-c", "id -u; id -g", extra=["--entrypoint", "sh"])
    uid, gid = (int(x) for x in ids.stdout.split())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"[ebk image] {TAG}: built in {seconds:.1f}s, {size / 1e6:.1f} MB, uid {uid}"
        )
    return BuiltImage(TAG, seconds, size, uid, gid)


def _give_to(path: Path, uid: int, gid: int) -> None:
    """chown -R: the container's ebk user must read the key file, write the repository."""
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


@dataclass
class ContainerEnv:
    """An ebk config on the host, shared with containers: the config dir (ebk.toml and
    kek.json) mounted read-only, the repository read-write, both at their host paths."""

    env: EbkEnv
    image: BuiltImage
    engine: Any

    def mounts(self) -> list[str]:
        root, repo = self.env.root, self.env.repo_dir
        return [
            "-v", f"{root}:{root}:ro",
            "-v", f"{repo}:{repo}:rw",
            "-e", f"EBK_CONFIG={self.env.config_path}",
        ]  # fmt: skip

    def ebk(
        self, *args: str, extra: tuple[str, ...] = (), timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``docker run --rm --network host ... IMAGE ARGS`` (the image's user); no check."""
        result: subprocess.CompletedProcess[str] = self.engine.run_container(
            self.image.tag,
            *args,
            extra=["--no-healthcheck", *self.mounts(), *extra],
            check=False,
            timeout=timeout,
        )
        return result


def _container_env(
    engine: Any, image: BuiltImage, root: Path, cluster: PgCluster | None, extra: str = ""
) -> ContainerEnv:
    env = make_env(root, cluster, extra=extra)  # ebk init on the host: key file + repository
    _give_to(root, image.uid, image.gid)
    return ContainerEnv(env, image, engine)


def test_image_runs_ebk_as_non_root(docker_engine: Any, ebk_image: BuiltImage) -> None:
    assert ebk_image.uid != 0 and ebk_image.gid != 0
    uid = docker_engine.run("run", "--rm", "--entrypoint", "id", TAG, "-u").stdout.strip()
    assert uid == str(ebk_image.uid) != "0"
    user = docker_engine.run("run", "--rm", "--entrypoint", "id", TAG, "-un").stdout.strip()
    assert user == "ebk"

    help_out = docker_engine.run_container(TAG, "--help").stdout
    assert "Encrypted backups of PostgreSQL" in help_out
    assert "backup" in help_out and "daemon" in help_out
    version = docker_engine.run_container(TAG, "--version").stdout
    assert version.startswith("ebk, version "), version

    pg_dump = docker_engine.run_container(
        TAG, "--version", extra=["--entrypoint", "/usr/lib/postgresql/15/bin/pg_dump"]
    ).stdout
    assert pg_dump.startswith("pg_dump (PostgreSQL) 15."), pg_dump

    config = json.loads(
        docker_engine.run("image", "inspect", "--format", "{{json .Config}}", TAG).stdout
    )
    assert config["Entrypoint"] == ["ebk"]
    assert config["Cmd"] == ["daemon"]
    assert "healthz" in " ".join(config["Healthcheck"]["Test"])
    assert config["User"] == "ebk"

    # pip and setuptools were removed from the venv; nothing of the build stage leaked.
    leftovers = docker_engine.run_container(
        TAG,
        "-c",
        "ls /opt/ebk/bin/pip* /src /etc/pip.conf /usr/bin/gcc 2>/dev/null;"
        " /opt/ebk/bin/python -c 'import pip' 2>/dev/null && echo pip-importable; true",
        extra=["--entrypoint", "sh"],
    ).stdout.split()
    assert leftovers == []
    assert ebk_image.size < SIZE_BUDGET, f"image is {ebk_image.size / 1e6:.0f} MB"


def test_container_backs_up_host_postgres_and_host_restores(
    docker_engine: Any,
    ebk_image: BuiltImage,
    fresh_cluster: PgCluster,
    postgres_dir: Path,
    tmp_path: Path,
) -> None:
    pg = fresh_cluster
    pg.psql(
        "CREATE TABLE items (id int primary key, v text);"
        "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 20000) g;"
    )
    pg.psql("CREATE DATABASE app")
    pg.psql(
        "CREATE TABLE orders (id int primary key, total numeric);"
        "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 3000) g;",
        db="app",
    )
    items = pg.psql(CONTENT_SQL.format(table="items"))
    orders = pg.psql(CONTENT_SQL.format(table="orders"), db="app")
    ctr = _container_env(docker_engine, ebk_image, tmp_path / "ebk", pg)

    physical = ctr.ebk("backup", "--type", "physical", "--json")
    assert physical.returncode == 0, physical.stderr
    logical = ctr.ebk("backup", "--type", "logical", "--database", "app", "--json")
    assert logical.returncode == 0, logical.stderr
    phys_id = json.loads(physical.stdout)["backup_id"]
    log_id = json.loads(logical.stdout)["backup_id"]

    # The container wrote as its own user into the host's repository.
    owners = {p.stat().st_uid for p in ctr.env.repo_dir.rglob("*") if p.is_file()}
    assert ebk_image.uid in owners

    # The host sees both, with the same config but its own copy of the key file: the
    # container's key file sits in a directory its uid owns, which root refuses to trust.
    host = _host_env(ctr.env, tmp_path / "host")
    listed = json.loads(host.run("list", "--json").stdout)
    by_id = {b["backup_id"]: b for b in listed}
    assert set(by_id) == {phys_id, log_id}
    assert by_id[phys_id]["kind"] == "physical"
    assert by_id[log_id]["kind"] == "logical"

    # Physical: restore on the host, start it, compare by content.
    target = postgres_dir / "restored"
    host.run("restore", phys_id, "--to", str(target), "--owner", "postgres")
    restored = start_existing(target)
    try:
        assert restored.psql(CONTENT_SQL.format(table="items")) == items
        assert restored.psql(CONTENT_SQL.format(table="orders"), db="app") == orders
    finally:
        restored.stop()

    # Logical: the container's pg_dump output restores with the host's pg_restore.
    host.run("restore", log_id, "--to-db", "app_copy", "--database", "app", "--create")
    assert pg.psql(CONTENT_SQL.format(table="orders"), db="app_copy") == orders


def test_backup_against_unreachable_postgres_exits_7(
    docker_engine: Any, ebk_image: BuiltImage, tmp_path: Path
) -> None:
    """The CronJob contract: PostgreSQL down is exit 7 from the container, nothing listed."""
    closed = free_port()  # nothing listens there
    section = (
        f'[postgres]\nhost = "127.0.0.1"\nport = {closed}\nuser = "postgres"\n'
        'bin_dir = "/usr/lib/postgresql/15/bin"\n'
    )
    ctr = _container_env(docker_engine, ebk_image, tmp_path / "ebk", None, extra=section)
    result = ctr.ebk("backup", "--type", "physical")
    assert_refused(result, 7, mentions="ebk: error:")
    assert str(closed) in result.stderr
    assert json.loads(ctr.env.run("list", "--json").stdout) == []


def _host_env(env: EbkEnv, root: Path) -> EbkEnv:
    """The same repository and config for root on the host, with a root-owned key copy."""
    root.mkdir(mode=0o700)
    keyfile = root / "kek.json"
    shutil.copy(env.keyfile, keyfile)
    keyfile.chmod(0o600)
    config = root / "ebk.toml"
    config.write_text(env.config_path.read_text().replace(str(env.keyfile), str(keyfile)))
    return EbkEnv(root, config, env.repo_dir, keyfile)


def _inspect(engine: Any, name: str, fmt: str) -> str:
    return str(engine.run("inspect", "--format", fmt, name).stdout.strip())


def _wait_health(engine: Any, name: str, want: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = _inspect(engine, name, "{{.State.Status}} {{.State.Health.Status}}")
        if status.endswith(f" {want}") or not status.startswith("running"):
            return status
        time.sleep(0.5)
    return status


def test_daemon_container_turns_healthy_and_stops_cleanly(
    docker_engine: Any, ebk_image: BuiltImage, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """The image's own HEALTHCHECK (intervals shortened) against the daemon's /healthz;
    with nothing answering at EBK_HEALTH_URL the same probe turns the container
    unhealthy.  SIGTERM (docker stop) ends the daemon with exit 0."""
    jobs = '[[daemon.jobs]]\nkind = "physical"\ncron = "0 3 1 1 *"\n'
    ctr = _container_env(docker_engine, ebk_image, tmp_path / "ebk", pg_cluster, extra=jobs)
    port = free_port()
    # The image's start period (60s) would hide failures; 0 would mean "the image's".
    fast = ["--health-interval", "1s", "--health-timeout", "5s", "--health-retries", "2",
            "--health-start-period", "1s"]  # fmt: skip
    names = {"good": f"ebk-daemon-{port}", "bad": f"ebk-daemon-{port}-nohealth"}
    urls = {
        "good": f"http://127.0.0.1:{port}/healthz",
        "bad": f"http://127.0.0.1:{free_port()}/healthz",
    }
    try:
        for key, name in names.items():
            docker_engine.run(
                "run", "-d", "--name", name, "--network", "host", *fast, *ctr.mounts(),
                "-e", f"EBK_DAEMON__LISTEN=127.0.0.1:{port if key == 'good' else free_port()}",
                "-e", f"EBK_HEALTH_URL={urls[key]}",
                TAG,
            )  # fmt: skip
        good = _wait_health(docker_engine, names["good"], "healthy", 60)
        bad = _wait_health(docker_engine, names["bad"], "unhealthy", 60)
        logs = docker_engine.run("logs", names["good"], check=False).stderr
        assert good == "running healthy", f"{good}\n{logs[-3000:]}"
        assert bad == "running unhealthy", bad

        t0 = time.monotonic()
        docker_engine.run("stop", "--time", "20", names["good"])
        stopped_in = time.monotonic() - t0
        assert _inspect(docker_engine, names["good"], "{{.State.ExitCode}}") == "0"
        assert stopped_in < 15, f"docker stop took {stopped_in:.1f}s"
    finally:
        docker_engine.run("rm", "-f", *names.values(), check=False)


def test_verify_image_proves_a_backup_by_a_restore_in_the_container(
    docker_engine: Any,
    docker_base_image: str,
    ebk_image: BuiltImage,
    fresh_cluster: PgCluster,
    tmp_path: Path,
) -> None:
    """The Dockerfile's `verify` target (the Kubernetes verify CronJob's image) carries the
    PostgreSQL server: `ebk verify --level restore` starts its scratch server in the
    container, as the image's non-root user, and signs a passing record."""
    tag = "ebk-verify:test"
    docker_engine.build(
        tag=tag,
        dockerfile=REPO / "Dockerfile",
        build_args={"BASE_IMAGE": docker_base_image},
        extra=["--target", "verify"],
    )
    default_has_server = docker_engine.run_container(
        TAG, "-c", "ls /usr/lib/postgresql/15/bin/postgres", extra=["--entrypoint", "sh"],
        check=False,
    )  # fmt: skip
    assert default_has_server.returncode != 0, "the default image must stay client-only"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    fresh_cluster.psql(
        "CREATE TABLE items (id int primary key, v text);"
        "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 5000) g;"
    )
    ctr = _container_env(
        docker_engine,
        ebk_image,
        tmp_path / "ebk",
        fresh_cluster,
        extra=f'\n[verify]\nscratch_dir = "{scratch}"\n',
    )
    os.chown(scratch, ebk_image.uid, ebk_image.gid)
    backup = ctr.ebk("backup", "--type", "physical", "--json")
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["backup_id"]
    verifier = ContainerEnv(ctr.env, dataclasses.replace(ebk_image, tag=tag), docker_engine)
    result = verifier.ebk(
        "verify", backup_id, "--level", "restore", "--json",
        extra=("-v", f"{scratch}:{scratch}:rw"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = json.loads(result.stdout)
    outcomes = {c["name"]: c["outcome"] for c in record["checks"]}
    assert record["passed"] and outcomes["pg_amcheck"] == "pass", outcomes
    assert outcomes["fingerprints"] == "pass" and outcomes["pg_verifybackup"] == "pass"
    assert list(scratch.iterdir()) == [], "the scratch directory was left behind"
    listed = json.loads(_host_env(ctr.env, tmp_path / "host").run("list", "--json").stdout)
    assert listed[0]["verified"]["level"] == "restore"
