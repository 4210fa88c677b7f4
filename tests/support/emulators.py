"""The one launcher for the HTTP emulators the tests and benches run on 127.0.0.1.

moto's server (S3, KMS, EC2, IAM) and gcp-storage-emulator come with the venv (the
`test` extra); Azurite comes from npm (scripts/setup.sh installs it under .cache/npm).
Each ``run_*`` context manager starts one in memory on a free loopback port, waits
until it listens and stops it afterwards (SIGTERM, then SIGKILL); a missing tool skips
locally and fails under CI.  Session fixtures around them: tests/support/fixtures.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.needs import skip_or_fail
from tests.support.net import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
    "K1SZFPTOtr/KBHBeksoGMGw=="
)  # Azurite's published development key, not a secret
AZURITE_ACCOUNT = "devstoreaccount1"


def find_tool(name: str, *candidates: Path) -> str | None:
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


def require_tool(name: str, how: str, *candidates: Path) -> str:
    """The tool's path; skip locally / fail in CI when it is not installed."""
    tool = find_tool(name, *candidates)
    if tool is None:
        skip_or_fail(f"{name} is not installed ({how}; scripts/setup.sh installs it)")
    return tool


@dataclass
class Server:
    """One running emulator; ``env`` carries credentials a test attaches to it."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def run_server(
    name: str,
    argv: list[str],
    port: int,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Iterator[Server]:
    """Start ``argv`` (which listens on ``port``), log to ``workdir/name.log``, stop after."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    server = Server(name, port, proc, log)
    try:
        try:
            wait_for_port(port, timeout=timeout)
        except TimeoutError:
            raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}") from None
        yield server
    finally:
        server.stop()


def moto_argv(port: int) -> list[str]:
    tool = require_tool("moto_server", "pip moto[server]", VENV_BIN / "moto_server")
    return [tool, "-H", "127.0.0.1", "-p", str(port)]


def gcs_argv(port: int) -> list[str]:
    """The GCS emulator through gcs_faithful.py (preconditions, paged listings, like GCS)."""
    require_tool(
        "gcp-storage-emulator", "pip gcp-storage-emulator", VENV_BIN / "gcp-storage-emulator"
    )
    faithful = Path(__file__).with_name("gcs_faithful.py")
    return [
        sys.executable,
        str(faithful),
        "start",
        "--port",
        str(port),
        "-H",
        "127.0.0.1",
        "--in-memory",
        "-q",
    ]


def azurite_argv(port: int) -> list[str]:
    tool = require_tool(
        "azurite-blob", "npm azurite@3", ROOT / ".cache/npm/node_modules/.bin/azurite-blob"
    )
    return [
        tool,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]


@contextmanager
def run_moto(
    workdir: Path, *, name: str = "moto", env: dict[str, str] | None = None
) -> Iterator[Server]:
    """moto's server: S3, KMS, EC2 and IAM on one port (``env``: e.g. auth settings)."""
    port = free_port()
    with run_server(name, moto_argv(port), port, workdir, env) as server:
        yield server


@contextmanager
def run_gcs_emulator(workdir: Path) -> Iterator[Server]:
    port = free_port()
    with run_server("gcs", gcs_argv(port), port, workdir) as server:
        yield server


@contextmanager
def run_azurite(workdir: Path) -> Iterator[Server]:
    port = free_port()
    with run_server("azurite", azurite_argv(port), port, workdir) as server:
        yield server


def azurite_connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


def unique(prefix: str) -> str:
    """A bucket/container name no other test uses on a shared emulator."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
