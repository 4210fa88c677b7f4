"""Real KMS servers for the key-provider tests: an OpenBao dev server and moto's KMS.

OpenBao runs in dev mode with TLS (its own generated CA) and a file audit
device declared in a config file (OpenBao refuses to enable audit devices
through the API), so tests count the requests ebk makes on the server side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from tests.support.ebkenv import EbkEnv
from tests.support.net import free_port, wait_for_port
from tests.support.postgres import PgCluster

BIN = Path(sys.executable).parent
BAO = BIN / "bao"
MOTO = BIN / "moto_server"

# The least-privilege policy of docs/key-management.md, for the transit key "ebk".
EBK_POLICY = """
path "transit/encrypt/ebk" { capabilities = ["update"] }
path "transit/decrypt/ebk" { capabilities = ["update"] }
path "transit/rewrap/ebk"  { capabilities = ["update"] }
"""


def _free_pair() -> int:
    """A free port whose successor is free too (dev mode puts its cluster port at +1)."""
    for _ in range(50):
        port = free_port()
        if port < 65535:
            import socket

            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of ports")


@dataclass
class Bao:
    """One OpenBao dev server: `bao()` runs the CLI as root, `transit_requests()` counts."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    token: str = "ebk-test-root"
    stopped: bool = field(default=False)

    @property
    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """A copy of the dev CA: OpenBao deletes its generated TLS files when it stops."""
        return self.root / "ca.pem"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    def env(self) -> dict[str, str]:
        return dict(os.environ, BAO_ADDR=self.address, BAO_TOKEN=self.token,
                    BAO_CACERT=str(self.ca_cert), HOME=str(self.root))

    def bao(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([str(BAO), *args], capture_output=True, text=True, env=self.env(),
                              timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"bao {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def token_file(self, token: str | None = None) -> Path:
        path = self.root / f"token-{token or self.token}"
        path.write_text((token or self.token) + "\n")
        path.chmod(0o600)
        return path

    def requests(self) -> list[dict[str, object]]:
        """Every request the audit device saw (responses are logged apart)."""
        if not self.audit_log.exists():
            return []
        entries = [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]
        return [e["request"] for e in entries if e.get("type") == "request"]

    def transit_requests(self) -> list[str]:
        """Paths of the requests to the transit mount, in order."""
        return [str(r["path"]) for r in self.requests()
                if str(r.get("path", "")).startswith("transit/")]

    def stop(self) -> None:
        if not self.stopped:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.stopped = True


def start_bao(root: Path) -> Bao:
    """Dev server with TLS, transit at transit/, keys ebk (derived), other (derived), plain."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tls").mkdir(exist_ok=True)
    (root / "bao.hcl").write_text(
        f'audit "file" "count" {{\n  options {{\n    file_path = "{root / "audit.log"}"\n'
        "  }\n}\n"
    )
    port = _free_pair()
    log = open(root / "bao.log", "wb")  # noqa: SIM115 - owned by the process
    bao = Bao(root, port, subprocess.Popen(  # type: ignore[arg-type]
        [str(BAO), "server", "-dev", "-dev-tls", f"-dev-tls-cert-dir={root / 'tls'}",
         "-dev-root-token-id=ebk-test-root", "-dev-no-store-token",
         f"-dev-listen-address=127.0.0.1:{port}", f"-config={root / 'bao.hcl'}"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HOME=str(root)),
    ))
    log.close()
    try:
        wait_for_port(port, timeout=30)
        shutil.copyfile(root / "tls" / "vault-ca.pem", bao.ca_cert)
        deadline = time.monotonic() + 30
        while bao.bao("status", check=False).find("Sealed") < 0:
            if time.monotonic() > deadline:
                raise TimeoutError("OpenBao did not answer")
            time.sleep(0.2)
        bao.bao("secrets", "enable", "transit")
        bao.bao("write", "-f", "transit/keys/ebk", "derived=true")
        bao.bao("write", "-f", "transit/keys/other", "derived=true")
        bao.bao("write", "-f", "transit/keys/plain")
    except BaseException:
        bao.stop()
        raise
    return bao


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """The shared server: tests only add to it (no seal, no stop)."""
    bao = start_bao(tmp_path_factory.mktemp("openbao"))
    (bao.root / "ebk.hcl").write_text(EBK_POLICY)
    bao.bao("policy", "write", "ebk", str(bao.root / "ebk.hcl"))
    yield bao
    bao.stop()


@pytest.fixture
def own_openbao(tmp_path: Path) -> Iterator[Bao]:
    """A server of the test's own, for sealing and stopping it."""
    bao = start_bao(tmp_path / "openbao")
    yield bao
    bao.stop()


@dataclass
class MotoKms:
    endpoint: str
    key_arn: str
    other_arn: str
    alias: str = "alias/ebk"

    def client(self) -> object:
        return boto3.client("kms", region_name="us-east-1", endpoint_url=self.endpoint,
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="session")
def moto_kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoKms]:
    port = free_port()
    root = tmp_path_factory.mktemp("moto")
    log = open(root / "moto.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_for_port(port, timeout=30)
        endpoint = f"http://127.0.0.1:{port}"
        kms = boto3.client("kms", region_name="us-east-1", endpoint_url=endpoint,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        key = kms.create_key(Description="ebk test KEK")["KeyMetadata"]["Arn"]
        other = kms.create_key(Description="another KEK")["KeyMetadata"]["Arn"]
        kms.create_alias(AliasName="alias/ebk", TargetKeyId=key)
        yield MotoKms(endpoint, key, other)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static test credentials for moto; no AWS profile or instance role is consulted."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def kms_env(root: Path, cluster: PgCluster | None, keys_toml: str) -> EbkEnv:
    """An ebk config like tests.support.ebkenv.make_env, with a [keys] section of the test's."""
    root.mkdir(parents=True, exist_ok=True)
    repo = root / "repo"
    config = root / "ebk.toml"
    text = f'[repository]\nurl = "file://{repo}"\n\n{keys_toml}\n\n[log]\nformat = "json"\n\n'
    if cluster is not None:
        text += cluster.config_section()
    config.write_text(text)
    env = EbkEnv(root, config, repo, root / "kek.json")
    env.run("init")
    return env


def vault_toml(bao: Bao, *, key: str = "ebk", token_file: Path | None = None,
               recipients: tuple[str, ...] = (), extra: str = "") -> str:
    tf = token_file or bao.token_file()
    rec = ", ".join(f'"{r}"' for r in recipients)
    return (f'[keys]\nprovider = "vault"\nrecovery_recipients = [{rec}]\n\n'
            f'[vault]\naddress = "{bao.address}"\ntransit_key = "{key}"\n'
            f'token_file = "{tf}"\nca_cert = "{bao.ca_cert}"\ntimeout = 5.0\nretries = 1\n'
            + extra)


def stored_files(env: EbkEnv) -> set[str]:
    """Every object in the local repository (what a failed backup must not add to)."""
    if not env.repo_dir.exists():
        return set()
    return {str(p.relative_to(env.repo_dir)) for p in env.repo_dir.rglob("*") if p.is_file()}

