"""Object-store emulators on 127.0.0.1, started by the tests, and helpers around them.

moto's S3 server and gcp-storage-emulator come with the venv (the `test`
extra); Azurite comes from npm (scripts/setup.sh installs it under
.cache/npm).  Each runs in memory on a free port and is stopped afterwards.
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

import pytest

from tests.support.net import wait_for_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")  # Azurite's published development key, not a secret
AZURITE_ACCOUNT = "devstoreaccount1"


def missing(what: str) -> None:
    """Skip locally, fail in CI: a missing emulator must never pass silently there."""
    message = f"{what} is not installed (scripts/setup.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def find_tool(name: str, *candidates: Path) -> str | None:
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


@dataclass
class Server:
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
def run_server(name: str, argv: list[str], port: int, workdir: Path,
               env: dict[str, str] | None = None) -> Iterator[Server]:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    server = Server(name, port, proc, log)
    try:
        try:
            wait_for_port(port, timeout=60)
        except TimeoutError:
            raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}") from None
        yield server
    finally:
        server.stop()


def moto_argv(port: int) -> list[str]:
    tool = find_tool("moto_server", VENV_BIN / "moto_server")
    if tool is None:
        missing("moto_server (pip moto[server])")
    return [str(tool), "-H", "127.0.0.1", "-p", str(port)]


def gcs_argv(port: int) -> list[str]:
    tool = find_tool("gcp-storage-emulator", VENV_BIN / "gcp-storage-emulator")
    if tool is None:
        missing("gcp-storage-emulator (pip)")
    return [str(tool), "start", "--port", str(port), "-H", "127.0.0.1", "--in-memory", "-q"]


def azurite_argv(port: int) -> list[str]:
    tool = find_tool("azurite-blob", ROOT / ".cache/npm/node_modules/.bin/azurite-blob",
                     Path("/work/main/.cache/npm/node_modules/.bin/azurite-blob"))
    if tool is None:
        missing("azurite-blob (npm azurite@3)")
    return [str(tool), "--blobHost", "127.0.0.1", "--blobPort", str(port),
            "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry", "--silent"]


def azurite_connection_string(endpoint: str) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
