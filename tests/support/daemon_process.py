"""Run `ebk daemon` as a real process and watch its JSON log lines and endpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.ebkenv import EbkEnv, make_env
from tests.support.net import free_port
from tests.support.postgres import PgCluster


def daemon_section(
    root: Path, port: int, jobs: str, extra: str = "", shutdown_timeout: float = 10
) -> str:
    return (
        f'[daemon]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{root}/state"\n'
        f"shutdown_timeout_seconds = {shutdown_timeout}\n{extra}\n{jobs}\n"
    )


def job(
    kind: str, cron: str = "", name: str = "", interval: int = 0, databases: tuple[str, ...] = ()
) -> str:
    text = f'[[daemon.jobs]]\nkind = "{kind}"\n'
    if name:
        text += f'name = "{name}"\n'
    if cron:
        text += f'cron = "{cron}"\n'
    if interval:
        text += f"interval_seconds = {interval}\n"
    if databases:
        text += "databases = [" + ", ".join(f'"{d}"' for d in databases) + "]\n"
    return text + "\n"


def daemon_env(
    root: Path,
    cluster: PgCluster | None,
    jobs: str,
    *,
    extra: str = "",
    daemon_extra: str = "",
    shutdown_timeout: float = 10,
) -> tuple[EbkEnv, int]:
    port = free_port()
    env = make_env(
        root,
        cluster,
        extra=extra + daemon_section(root, port, jobs, daemon_extra, shutdown_timeout),
    )
    return env, port


class DaemonProcess:
    """One `python -m ebk --config CFG daemon` (or ``argv``), its stderr in a file."""

    def __init__(
        self,
        env: EbkEnv,
        port: int,
        *,
        extra_env: dict[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self.env = env
        self.port = port
        self.log_path = env.root / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("EBK_")}
        child_env.update(extra_env or {})
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "ebk", "--config", str(env.config_path), "daemon"],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=child_env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"event": raw, "unparsed": True}
            out.append(doc if isinstance(doc, dict) else {"event": raw, "unparsed": True})
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition"
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) while waiting for "
                    f"{what}:\n{self.log_path.read_text()[-4000:]}"
                )
            time.sleep(0.1)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}:\n{self.log_path.read_text()[-4000:]}"
        )

    def wait_event(self, name: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        return self.wait_for(
            lambda: (found := self.events(name)) and len(found) >= count and found,
            timeout,
            f"{count}x log event {name!r}",
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False

        self.wait_for(ready, timeout, "/readyz to answer 200")

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of /metrics, or None when the series is absent."""
        _, body = self.get("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in body.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, label_text = series.partition("{")
            found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if metric == name and found == want:
                return float(value)
        return None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds until exit)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()
