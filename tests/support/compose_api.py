"""Compose without Compose: infra/docker/prod/docker-compose.prod.yml started on the real
Docker engine, each setting translated to the engine the way Compose v2 does.

Why not Compose itself: Compose v2 is no Debian 12 package and cannot be downloaded here,
and Debian's docker-compose 1.29 (``docker-compose config``) rejects the file: the
top-level ``name:``, ``deploy.resources.limits.pids`` and ``bind.create_host_path``, whose
``false`` is the file's safety (no empty PGDATA on the unencrypted root disk when the
encrypted volume is locked).  So this module reads the file
(with ``${VAR:-default}`` interpolation) and creates the network and containers through
the docker CLI with the same settings: ``--mount type=bind`` for bind volumes and file
secrets (the engine never creates a missing source for ``--mount``, exactly what
``create_host_path: false`` asks Compose for), tmpfs mounts with their sizes, user,
read-only root, dropped capabilities, security options, restart policy, stop signal and
grace period, shm size, environment, health checks, resource limits, logging,
``network_mode: service:X``, ``depends_on: condition: service_healthy``, and published
ports.  A service key it does not translate is an error, so the file cannot grow a
setting that the test silently drops.

What differs from Compose (the harness's choices, stated where they happen):
- the images are built by the test (``build:`` is not run here);
- published host ports can be remapped (``port_map``) to free ports: the shared test
  machine may have something on 5432/9187;
- the network gets an explicit private subnet (``subnet``), as the harness's engine runs
  without a default bridge;
- Compose's labels, container names (``<project>-<service>-1``) and network name are
  reproduced; its orphan handling, ``restart`` on engine restart, and project-wide
  ``up`` diffing are not.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.infra.manifests import interpolate
from tests.support.docker_engine import DockerEngine

SERVICE_KEYS = {
    "image", "build", "command", "user", "read_only", "cap_drop", "security_opt",
    "restart", "stop_signal", "stop_grace_period", "shm_size", "environment", "secrets",
    "volumes", "ports", "networks", "network_mode", "depends_on", "healthcheck",
    "deploy", "logging",
}  # fmt: skip


def seconds(duration: str) -> int:
    """Compose durations: 1m30s, 2m, 10s, 500ms (rounded up to whole seconds)."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", duration):
        total += (
            float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
        )
    return max(1, int(-(-total // 1))) if total else 0


@dataclass
class ComposeProject:
    engine: DockerEngine
    file: Path
    environ: Mapping[str, str]
    port_map: Mapping[int, int] = field(default_factory=dict)
    subnet: str = "10.231.0.0/24"

    def __post_init__(self) -> None:
        raw = yaml.safe_load(self.file.read_text())
        self.spec: dict[str, Any] = interpolate(raw, self.environ)
        self.name: str = self.spec["name"]
        self.dir = self.file.parent

    # -- names ------------------------------------------------------------------------

    def container(self, service: str) -> str:
        return f"{self.name}-{service}-1"

    def network_name(self, key: str) -> str:
        net = (self.spec.get("networks") or {}).get(key) or {}
        return str(net.get("name") or f"{self.name}_{key}")

    # -- lifecycle --------------------------------------------------------------------

    def create_networks(self) -> None:
        for key in self.spec.get("networks") or {}:
            name = self.network_name(key)
            if self.engine.run("network", "inspect", name, check=False).returncode != 0:
                self.engine.run(
                    "network", "create", "--driver", "bridge", "--subnet", self.subnet,
                    "--label", f"com.docker.compose.project={self.name}",
                    "--label", f"com.docker.compose.network={key}",
                    name,
                )  # fmt: skip

    def create(self, service: str) -> None:
        self.engine.run("create", *self.create_args(service), timeout=120)

    def start(self, service: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.engine.run("start", self.container(service), check=check, timeout=120)

    def up(self, *services: str, timeout: float = 180) -> None:
        """Create (if needed) and start ``services`` in order, each after its
        ``depends_on`` conditions hold."""
        self.create_networks()
        for service in services:
            for dep, cond in self._depends_on(service).items():
                if cond == "service_healthy":
                    self.wait_healthy(dep, timeout=timeout)
            if not self.exists(service):
                self.create(service)
            self.start(service)

    def exists(self, service: str) -> bool:
        proc = self.engine.run("container", "inspect", self.container(service), check=False)
        return proc.returncode == 0

    def stop(self, service: str) -> None:
        self.engine.run("stop", self.container(service), timeout=300)

    def down(self) -> None:
        for service in reversed(list(self.spec["services"])):
            self.engine.run("rm", "-f", "-v", self.container(service), check=False)
        for key in self.spec.get("networks") or {}:
            self.engine.run("network", "rm", self.network_name(key), check=False)

    def state(self, service: str) -> dict[str, Any]:
        out = self.engine.run(
            "container", "inspect", "--format", "{{json .State}}", self.container(service)
        )
        return dict(yaml.safe_load(out.stdout))

    def wait_healthy(self, service: str, *, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(service)
            health = (st.get("Health") or {}).get("Status")
            if health == "healthy":
                return
            restarts = self.engine.run(
                "container", "inspect", "--format", "{{.RestartCount}}", self.container(service)
            ).stdout.strip()
            if restarts not in ("", "0") or st.get("Status") in ("exited", "dead"):
                logs = self.engine.run("logs", "--tail", "40", self.container(service), check=False)
                raise AssertionError(
                    f"{service} exited ({st.get('ExitCode')}, restarts {restarts}):\n"
                    f"{logs.stdout}{logs.stderr}"
                )
            if time.monotonic() > deadline:
                logs = self.engine.run("logs", "--tail", "40", self.container(service), check=False)
                raise AssertionError(
                    f"{service} not healthy after {timeout}s ({health}):\n"
                    f"{logs.stdout}{logs.stderr}"
                )
            time.sleep(1)

    def exec(
        self, service: str, *cmd: str, user: str | None = None, input: str | None = None,
        check: bool = True, timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        args = ["exec", *(["-i"] if input is not None else []), *(["-u", user] if user else [])]
        return self.engine.run(
            *args, self.container(service), *cmd, input=input, check=check, timeout=timeout
        )

    # -- the translation --------------------------------------------------------------

    def _depends_on(self, service: str) -> dict[str, str]:
        dep = self.spec["services"][service].get("depends_on") or {}
        if isinstance(dep, list):
            return {d: "service_started" for d in dep}
        return {k: (v or {}).get("condition", "service_started") for k, v in dep.items()}

    def _source(self, src: str) -> Path:
        path = Path(src)
        return path if path.is_absolute() else (self.dir / path).resolve()

    def create_args(self, service: str) -> list[str]:
        svc: dict[str, Any] = self.spec["services"][service]
        unknown = set(svc) - SERVICE_KEYS
        assert not unknown, f"service {service}: the harness does not translate {unknown}"
        a = [
            "--name", self.container(service),
            "--label", f"com.docker.compose.project={self.name}",
            "--label", f"com.docker.compose.service={service}",
            "--label", "com.docker.compose.container-number=1",
            "--label", f"com.docker.compose.project.config_files={self.file}",
        ]  # fmt: skip
        if "user" in svc:
            a += ["--user", str(svc["user"])]
        if svc.get("read_only"):
            a.append("--read-only")
        for cap in svc.get("cap_drop") or []:
            a += ["--cap-drop", cap]
        for opt in svc.get("security_opt") or []:
            a += ["--security-opt", opt]
        if "restart" in svc:
            a += ["--restart", svc["restart"]]
        if "stop_signal" in svc:
            a += ["--stop-signal", svc["stop_signal"]]
        if "stop_grace_period" in svc:
            a += ["--stop-timeout", str(seconds(svc["stop_grace_period"]))]
        if "shm_size" in svc:
            a += ["--shm-size", str(svc["shm_size"])]
        env = svc.get("environment") or {}
        items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        for key, value in items:
            a += ["--env", f"{key}={'' if value is None else value}"]
        a += self._secret_mounts(svc)
        a += self._volume_mounts(svc)
        a += self._network_args(service, svc)
        a += self._healthcheck_args(svc.get("healthcheck"))
        limits = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        assert set(limits) <= {"cpus", "memory", "pids"}, limits
        if "cpus" in limits:
            a += ["--cpus", str(limits["cpus"])]
        if "memory" in limits:
            a += ["--memory", str(limits["memory"])]
        if "pids" in limits:
            a += ["--pids-limit", str(limits["pids"])]
        logging = svc.get("logging") or {}
        if "driver" in logging:
            a += ["--log-driver", logging["driver"]]
        for key, value in (logging.get("options") or {}).items():
            a += ["--log-opt", f"{key}={value}"]
        a.append(svc["image"])
        command = svc.get("command")
        if command is not None:
            a += command if isinstance(command, list) else shlex.split(command)
        return a

    def _secret_mounts(self, svc: dict[str, Any]) -> list[str]:
        """File secrets are read-only bind mounts at /run/secrets/<target> (Compose
        does the same; it ignores uid/gid/mode for them)."""
        out = []
        for ref in svc.get("secrets") or []:
            source = ref if isinstance(ref, str) else ref["source"]
            target = source if isinstance(ref, str) else ref.get("target", source)
            if not target.startswith("/"):
                target = f"/run/secrets/{target}"
            secret = self.spec["secrets"][source]
            assert set(secret) == {"file"}, f"secret {source}: only file secrets here"
            src = self._source(secret["file"])
            out += ["--mount", f"type=bind,source={src},target={target},readonly"]
        return out

    def _volume_mounts(self, svc: dict[str, Any]) -> list[str]:
        out = []
        for vol in svc.get("volumes") or []:
            assert isinstance(vol, dict), f"short volume syntax is not used here: {vol}"
            kind, target = vol["type"], vol["target"]
            if kind == "bind":
                src = self._source(vol["source"])
                create = (vol.get("bind") or {}).get("create_host_path", True)
                if create and not src.exists():  # Compose creates a missing source
                    src.mkdir(parents=True)  # unless create_host_path is false
                spec = f"type=bind,source={src},target={target}"
                out += ["--mount", spec + (",readonly" if vol.get("read_only") else "")]
            elif kind == "tmpfs":
                size = (vol.get("tmpfs") or {}).get("size")
                out += [
                    "--mount",
                    f"type=tmpfs,target={target}" + (f",tmpfs-size={size}" if size else ""),
                ]
            else:
                raise AssertionError(f"volume type {kind} is not translated")
        return out

    def _network_args(self, service: str, svc: dict[str, Any]) -> list[str]:
        mode = svc.get("network_mode")
        if mode:
            assert "networks" not in svc and "ports" not in svc, service
            if mode.startswith("service:"):
                return ["--network", f"container:{self.container(mode.split(':', 1)[1])}"]
            return ["--network", mode]
        out = []
        nets = svc.get("networks") or []
        for i, key in enumerate(nets):
            assert i == 0, "one network per service here (docker create attaches one)"
            out += ["--network", self.network_name(key), "--network-alias", service]
        for port in svc.get("ports") or []:
            ip, host, container = (
                str(port).rsplit(":", 2)
                if str(port).count(":") == 2
                else ("", *str(port).split(":"))
            )
            host_port = self.port_map.get(int(host), int(host))
            out += ["--publish", f"{ip + ':' if ip else ''}{host_port}:{container}"]
        return out

    @staticmethod
    def _healthcheck_args(hc: dict[str, Any] | None) -> list[str]:
        if not hc:
            return []
        test = hc["test"]
        if isinstance(test, list):
            kind, *cmd = test
            assert kind in ("CMD", "CMD-SHELL"), test
            # The docker CLI takes the shell form only; quoting keeps CMD's arguments.
            command = shlex.join(cmd) if kind == "CMD" else cmd[0]
        else:
            command = test
        out = ["--health-cmd", command]
        for key, flag in (
            ("interval", "--health-interval"),
            ("timeout", "--health-timeout"),
            ("start_period", "--health-start-period"),
        ):
            if key in hc:
                out += [flag, f"{seconds(hc[key])}s"]
        if "retries" in hc:
            out += ["--health-retries", str(hc["retries"])]
        return out
