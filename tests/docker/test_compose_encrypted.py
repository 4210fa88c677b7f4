"""infra/docker/prod/docker-compose.prod.yml run for real: PostgreSQL 15 and the ebk daemon
on the Docker engine, PGDATA on an fscrypt v2 directory of an ext4 `-O encrypt` loop image
whose key `ebk volume` keeps wrapped by OpenBao Transit.

The deployment is started through tests/support/compose_api.py (the Compose file's
settings translated to the engine as Compose v2 does; that module says why not Compose
itself and what differs).  PostgreSQL is tests/docker/postgres15/ (Debian's postgresql-15
on the debootstrap base) through EBK_POSTGRES_IMAGE; ebk is the top-level Dockerfile,
built unchanged (the base image is tagged as the Dockerfile's default FROM).

The setup follows infra/docker/prod/README.md: `ebk volume init` on the host, PGDATA
inside the volume, secrets 999:999 0600, `ebk init` in a container, postgres up, the
backup role from infra/postgres/ebk-role.sql, ebk up (its preflight policy `require`
must pass for the daemon to become healthy).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.manifests import COMPOSE_FILE, ROLE_SQL
from tests.support.compose_api import ComposeProject
from tests.support.docker_engine import REPO, DockerEngine
from tests.support.ebkenv import EbkEnv
from tests.support.encrypted_fs import loop_ext4
from tests.support.needs import need, need_root
from tests.support.net import free_port
from tests.support.openbao import Bao, vault_toml

pytestmark = [pytest.mark.docker, pytest.mark.root]

HERE = Path(__file__).resolve().parent
PG_IMAGE = "ebk-postgres:15"
EBK_IMAGE = "ebk:latest"  # the Compose file's image for the ebk service
MARKER = "ebk-compose-marker-c41f"
ROWS = 2000
PG_UID = 999


def _own(path: Path, mode: int) -> None:
    os.chown(path, PG_UID, PG_UID)
    path.chmod(mode)


def _psql(project: ComposeProject, sql: str, *, input: str | None = None) -> str:
    args = ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres"]
    if input is None:
        args += ["-c", sql]
    return project.exec("postgres", *args, input=input).stdout.strip()


def _scan(image: Path, needle: bytes) -> bool:
    """A raw scan of the backing file, in overlapping chunks."""
    overlap = len(needle)
    tail = b""
    with image.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            if needle in tail + chunk:
                return True
            tail = chunk[-overlap:]
    return False


@pytest.fixture
def compose_images(docker_engine: DockerEngine, docker_base_image: str) -> Iterator[None]:
    """PostgreSQL 15 and ebk images, built locally with what Compose would use."""
    t0 = time.monotonic()
    # The Dockerfiles' default FROM, served by the debootstrap base: the top-level
    # Dockerfile builds unchanged, as `docker compose build` would run it.
    docker_engine.run("tag", docker_base_image, "debian:bookworm-slim")
    docker_engine.build(tag=PG_IMAGE, dockerfile=HERE / "postgres15" / "Dockerfile",
                        context=HERE / "postgres15")  # fmt: skip
    docker_engine.build(tag=EBK_IMAGE, dockerfile=REPO / "Dockerfile")
    print(f"[compose images] built in {time.monotonic() - t0:.0f}s")
    yield


def test_compose_deployment_on_an_openbao_unlocked_fscrypt_volume(
    docker_engine: DockerEngine, compose_images: None, openbao: Bao, tmp_path: Path
) -> None:
    need_root()
    need(shutil.which("mkfs.ext4") is not None, "mkfs.ext4 (e2fsprogs)")
    base = tmp_path
    base.chmod(0o755)

    # -- the host side, as the README says ------------------------------------------
    # ebk on the host holds the volume key, wrapped by OpenBao Transit.
    host = base / "host-ebk"
    host.mkdir()
    config = host / "ebk.toml"
    config.write_text(
        vault_toml(openbao)
        + f'\n[volume]\nkey_dir = "{host / "volumes"}"\n\n[log]\nformat = "json"\n'
    )
    ebk = EbkEnv(host, config, host / "repo", host / "kek.json")

    with loop_ext4(base / "pgdata.img", base / "srv", size_mb=192, encrypt=True) as srv:
        pgdata_host = srv / "pgdata"
        project: ComposeProject | None = None
        try:
            out = ebk.run("volume", "init", "--type", "fscrypt", str(pgdata_host)).stdout
            assert "initialized fscrypt volume" in out
            (row,) = json.loads(ebk.run("volume", "status", str(pgdata_host), "--json").stdout)
            key_object = json.loads(Path(row["key_object"]).read_text())
            assert key_object["slot"]["provider"] == "vault"  # wrapped by OpenBao
            (pgdata_host / "data").mkdir()
            _own(pgdata_host / "data", 0o700)
            # A positive control for the raw scan: plaintext on the same filesystem,
            # outside the encrypted directory, is found.
            (srv / "control.txt").write_text(f"{MARKER}-control\n")

            secrets = base / "secrets"
            ebk_dir = base / "ebk"
            for d in (secrets, ebk_dir):
                d.mkdir()
                _own(d, 0o700)
            for name in ("postgres_password", "ebk_db_password"):
                (secrets / name).write_text(os.urandom(18).hex())
                _own(secrets / name, 0o600)

            # README step 3: the key file and the repository, by `ebk init` in a container.
            docker_engine.run_container(
                EBK_IMAGE, "init", network="none",
                extra=["--user", f"{PG_UID}:{PG_UID}",
                       "-v", f"{secrets}:/secrets", "-v", f"{ebk_dir}:/var/lib/ebk",
                       "-e", "EBK_KEYS__KEYFILE=/secrets/kek.json"],
            )  # fmt: skip
            assert (secrets / "kek.json").stat().st_mode & 0o777 == 0o600

            pg_port, metrics_port = free_port(), free_port()
            project = ComposeProject(
                docker_engine,
                COMPOSE_FILE,
                {
                    "PGDATA_HOST_DIR": str(pgdata_host),
                    "EBK_HOST_DIR": str(ebk_dir),
                    "EBK_SECRETS_DIR": str(secrets),
                    "EBK_POSTGRES_IMAGE": PG_IMAGE,
                },
                port_map={5432: pg_port, 9187: metrics_port},
                subnet=f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24",
            )
            project.down()  # leftovers of an interrupted run

            # README step 4: postgres, the backup role, then ebk.
            project.up("postgres")
            project.wait_healthy("postgres")
            ebk_password = (secrets / "ebk_db_password").read_text()
            _psql(
                project, "", input=f"\\set ebk_password '{ebk_password}'\n" + ROLE_SQL.read_text()
            )
            _psql(
                project,
                f"CREATE TABLE marker (id int PRIMARY KEY, t text); "
                f"INSERT INTO marker SELECT g, '{MARKER}-' || g FROM generate_series(1, {ROWS}) g",
            )
            # The published port (loopback only) speaks SCRAM to the host.
            pg_bin = Path("/usr/lib/postgresql/15/bin/psql")
            if pg_bin.exists():
                via_port = subprocess.run(
                    [str(pg_bin), "-XAt", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres",
                     "-d", "postgres", "-c", "SELECT count(*) FROM marker"],
                    env={**os.environ,
                         "PGPASSWORD": (secrets / "postgres_password").read_text()},
                    capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert via_port.stdout.strip() == str(ROWS), via_port.stderr

            project.up("ebk")
            project.wait_healthy("ebk", timeout=150)  # the daemon's preflight passed

            pre = project.exec("ebk", "ebk", "preflight", "--json", check=False)
            assert pre.returncode == 0, pre.stdout + pre.stderr
            verdicts = _verdicts(json.loads(pre.stdout))
            data = [v for v in verdicts if "/var/lib/postgresql/data" in json.dumps(v)]
            assert data, verdicts
            assert all(v.get("status") == "encrypted" for v in verdicts), verdicts
            assert any("fscrypt" in json.dumps(v).lower() for v in data), data

            backup = project.exec("ebk", "ebk", "backup", "--type", "physical", check=False)
            assert backup.returncode == 0, backup.stdout + backup.stderr
            listed = json.loads(project.exec("ebk", "ebk", "list", "--json").stdout)
            assert len(listed) == 1, listed

            _psql(project, "CHECKPOINT")
            os.sync()
            assert _scan(base / "pgdata.img", f"{MARKER}-control".encode())  # control
            assert not _scan(base / "pgdata.img", MARKER.encode() + b"-1"), (
                "a marker row is in the backing image in plaintext"
            )

            # -- locked: no PostgreSQL, ciphertext names ----------------------------
            project.stop("ebk")
            project.stop("postgres")
            out = ebk.run("volume", "lock", str(pgdata_host)).stdout
            assert out.startswith("locked:"), out
            names = os.listdir(pgdata_host)
            assert names != ["data"] and len(names) == 1, names  # one ciphertext name
            refused = project.start("postgres", check=False)
            assert refused.returncode != 0, "PostgreSQL started on a locked volume"
            assert "does not exist" in refused.stderr + refused.stdout, refused
            assert not project.state("postgres")["Running"]
            # create_host_path: false: nothing was created in its place.
            assert os.listdir(pgdata_host) == names
            assert not _scan(base / "pgdata.img", MARKER.encode() + b"-1")

            # -- unlocked: PostgreSQL runs, the data is intact ----------------------
            out = ebk.run("volume", "unlock", str(pgdata_host)).stdout
            assert out.startswith("unlocked:"), out
            assert os.listdir(pgdata_host) == ["data"]
            project.start("postgres")
            project.wait_healthy("postgres")
            count = _psql(project, f"SELECT count(*) FROM marker WHERE t LIKE '{MARKER}-%'")
            assert count == str(ROWS)
            project.start("ebk")
            listed = json.loads(project.exec("ebk", "ebk", "list", "--json").stdout)
            assert len(listed) == 1, listed
        finally:
            if project is not None:
                project.down()
            ebk.run("volume", "lock", str(pgdata_host), expect=None)


def _verdicts(doc: Any) -> list[dict[str, Any]]:
    """The per-path verdicts of `ebk preflight --json`, whatever its envelope."""
    if isinstance(doc, list):
        return [v for v in doc if isinstance(v, dict)]
    for key in ("paths", "verdicts", "results"):
        if isinstance(doc.get(key), list):
            return list(doc[key])
    raise AssertionError(f"unexpected preflight JSON: {doc}")
