"""A private Docker engine for ebk's container tests (no registry, host-wide state untouched).

What this machine (and CI) has: Debian 12, root, Debian's ``docker.io`` engine
(dockerd 20.10 with its own managed containerd, runc, cgroup v1), no registry
reachable but Debian's mirror and PyPI.  So :func:`docker_engine` starts a throwaway
``dockerd`` with its own ``--data-root``, ``--exec-root``, pidfile, config file and
socket under one temp dir, with host-wide networking left alone (``--iptables=false
--ip-forward=false --bridge=none``).  Containers and builds therefore use ``--network
host``: :meth:`DockerEngine.build` and :meth:`DockerEngine.run_container` pass it by
default.  A container reaches a server the tests started on 127.0.0.1 directly.
The base image comes from tests/support/docker_image.py.

Environment knobs:

``EBK_DOCKER_STORAGE_DRIVER`` force a storage driver (default: overlay2, then vfs)
``EBK_DOCKER_TMPDIR``         parent of the engine's temp dir (default: ``$TMPDIR`` or /tmp);
                              keep it short, the socket path must fit in 107 bytes
``EBK_DOCKER_CLI``            docker client to use (default /usr/bin/docker, Debian's,
                              same version as the engine; else ``docker`` on PATH)
``EBK_DOCKER_KEEP=1``         leave the engine's temp dir (logs, data) after stopping
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


# Flags that keep the engine away from everything host-wide: no iptables rules, no
# ip_forward sysctl, no docker0 bridge.  (Bridge + iptables do work on this kernel, but
# only inside a network namespace of our own; on the host they would rewrite the shared
# firewall and sysctls.)  Containers use --network host instead.
DAEMON_NETWORK_FLAGS = (
    "--iptables=false",
    "--ip-masq=false",
    "--ip-forward=false",
    "--bridge=none",
)
STORAGE_DRIVERS = ("overlay2", "vfs")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_NAME = ".ebk-build-ca.pem"

_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")


class HarnessUnavailable(RuntimeError):
    """Something the docker tests need is missing here: a binary, root, a working daemon,
    the Debian mirror.  Test fixtures turn it into a skip, or a failure under CI."""


class DockerCommandError(subprocess.CalledProcessError):
    """A docker command failed; ``str()`` carries the end of its output."""

    def __str__(self) -> str:
        out = _text(self.stderr) or _text(self.output)
        tail = "\n".join(out.strip().splitlines()[-40:])
        return f"{' '.join(map(str, self.cmd))} exited {self.returncode}:\n{tail}"


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def which_sbin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:  # PATH may lack the sbin dirs (non-login shells, CI env)
        cand = Path(d) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def docker_cli() -> str | None:
    explicit = os.environ.get("EBK_DOCKER_CLI")
    if explicit:
        return explicit if which_sbin(explicit) else None
    # Debian's client matches the engine (20.10, API 1.41) and can also drive the
    # engine's built-in BuildKit (DOCKER_BUILDKIT=1).  A newer client on PATH works
    # too, but only with the legacy builder unless the buildx plugin is installed.
    debian = Path("/usr/bin/docker")
    if debian.is_file() and os.access(debian, os.X_OK):
        return str(debian)
    return which_sbin("docker")


def engine_problems() -> list[str]:
    """What stops :func:`docker_engine` from starting here (empty list: nothing)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root: this harness runs dockerd itself, which needs root")
    for tool in ("dockerd", "containerd", "runc"):
        if which_sbin(tool) is None:
            problems.append(f"{tool} not found (apt-get install docker.io)")
    if docker_cli() is None:
        problems.append("docker client not found (apt-get install docker.io)")
    return problems


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


@dataclass
class DockerEngine:
    """A running private dockerd.  ``env`` has DOCKER_HOST (and a private DOCKER_CONFIG)
    for any subprocess that should talk to it."""

    root: Path
    host: str
    cli: str
    storage_driver: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _builds: int = field(default=0, repr=False)

    # -- plain docker commands ---------------------------------------------------------

    def run(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        capture: bool = True,
        timeout: float | None = 600,
        input: str | bytes | None = None,
        text: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against this engine.  Raises DockerCommandError on failure
        when ``check``."""
        cmd = [self.cli, *map(str, args)]
        full_env = {**self.env, **(env or {})}
        if isinstance(input, bytes):
            text = False
        proc = subprocess.run(
            cmd,
            env=full_env,
            input=input,
            capture_output=capture,
            text=text,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise DockerCommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def run_container(
        self,
        image: str,
        *command: str,
        network: str = "host",
        extra: Sequence[str] = (),
        check: bool = True,
        timeout: float | None = 600,
        input: str | bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``docker run --rm --network host [EXTRA] IMAGE [COMMAND]``."""
        args = ["run", "--rm", "--network", network]
        if input is not None:
            args.append("-i")
        return self.run(*args, *extra, image, *command, check=check, timeout=timeout, input=input)

    # -- builds --------------------------------------------------------------------------

    def build(
        self,
        *,
        tag: str,
        dockerfile: str | os.PathLike[str] | None = None,
        dockerfile_text: str | None = None,
        context: str | os.PathLike[str] | None = REPO,
        build_args: Mapping[str, str] | None = None,
        network: str = "host",
        git_files_only: bool = True,
        host_ca_bundle: bool = True,
        extra: Sequence[str] = (),
        timeout: float = 1800,
    ) -> subprocess.CompletedProcess[str]:
        """``docker build --network host`` with the context sent as a tar on stdin.

        The context is only what git would ship (tracked plus untracked-not-ignored
        files, ``git_files_only``), so .venv/, .cache/ and friends stay out whether or
        not a .dockerignore exists.  Give either ``dockerfile`` (a path, inside the
        context or not) or ``dockerfile_text``; ``context=None`` sends an empty context.
        The full build log is kept in ``engine.root/build-N.log``.

        ``host_ca_bundle``: add the host's CA bundle to the context as
        ``.ebk-build-ca.pem``.  Here HTTPS to PyPI goes through a TLS-intercepting proxy
        whose CA only the host trusts; a Dockerfile opts in by copying that file with a
        wildcard (``COPY pyproject.toml .ebk-build-ca.pe[m] ./``) and pointing pip at it.
        """
        if (dockerfile is None) == (dockerfile_text is None):
            raise ValueError("give exactly one of dockerfile= and dockerfile_text=")
        self._builds += 1
        n = self._builds
        tar_path = self.root / f"context-{n}.tar"
        log_path = self.root / f"build-{n}.log"
        ctx = Path(context) if context is not None else None
        extras = {}
        if host_ca_bundle and HOST_CA_BUNDLE.is_file():
            extras[BUILD_CA_NAME] = HOST_CA_BUNDLE.read_bytes()
        df_name = _write_context_tar(
            tar_path, ctx, dockerfile, dockerfile_text, git_files_only, extras
        )
        cmd = [self.cli, "build", "--network", network, "-f", df_name, "-t", tag]
        for key, value in (build_args or {}).items():
            cmd += ["--build-arg", f"{key}={value}"]
        cmd += [*extra, "-"]
        try:
            with tar_path.open("rb") as stdin, log_path.open("w") as log:
                proc = subprocess.run(
                    cmd,
                    env=self.env,
                    stdin=stdin,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
        finally:
            tar_path.unlink(missing_ok=True)
        output = log_path.read_text(errors="replace")
        if proc.returncode != 0:
            raise DockerCommandError(proc.returncode, cmd, output, None)
        return subprocess.CompletedProcess(cmd, 0, output, "")

    # -- diagnostics ---------------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_errors(self, lines: int = 12) -> str:
        """The daemon log's error lines (or its tail when it has none)."""
        try:
            all_lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        bad = [ln for ln in all_lines if re.search(r"level=(error|fatal)|failed to start", ln)]
        return "\n".join((bad or all_lines)[-lines:])

    def stop(self, timeout: float = 30) -> None:
        """Remove all containers, stop dockerd (and its containerd), leave no process."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(Exception):
                ids = self.run("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    self.run("rm", "-f", *ids, check=False, timeout=120)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        _kill_processes_using(self.root)


def _write_context_tar(
    tar_path: Path,
    context: Path | None,
    dockerfile: str | os.PathLike[str] | None,
    dockerfile_text: str | None,
    git_files_only: bool,
    extras: Mapping[str, bytes] | None = None,
) -> str:
    """Write the build context tar; return the Dockerfile's name inside it."""
    inline_name = ".ebk-build.Dockerfile"
    # GNU format, and a short first member: the docker client sniffs only the first
    # 1 KiB of stdin to tell a tar from a Dockerfile, and a PAX header (Python's default
    # format writes one for sub-second mtimes) pushes the first real header past it; the
    # 20.10 client then sends the whole tar as "the Dockerfile".
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        top = tarfile.TarInfo("./")
        top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tar.addfile(top)
        if context is not None:
            for rel in _context_files(context, git_files_only):
                if rel not in (extras or {}):
                    tar.add(context / rel, arcname=rel, recursive=False)
        for name, blob in (extras or {}).items():
            _add_bytes(tar, name, blob)
        if dockerfile_text is not None:
            data = dockerfile_text.encode()
        else:
            df = Path(dockerfile).resolve()  # type: ignore[arg-type]
            if context is not None and df.is_relative_to(context.resolve()):
                rel = df.relative_to(context.resolve()).as_posix()
                if rel in tar.getnames():
                    return rel
            data = df.read_bytes()
        _add_bytes(tar, inline_name, data)
    return inline_name


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed: the legacy builder's COPY cache key includes mtimes
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _context_files(context: Path, git_files_only: bool) -> list[str]:
    if git_files_only and (context / ".git").exists() and shutil.which("git"):
        out = subprocess.run(
            [
                "git",
                "-C",
                str(context),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
        ).stdout.decode()
        names = sorted({n for n in out.split("\0") if n})
        # Deleted-but-still-indexed files are listed too; keep what exists.
        return [n for n in names if os.path.lexists(context / n)]
    files = []
    for dirpath, dirnames, filenames in os.walk(context):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            files.append(os.path.relpath(os.path.join(dirpath, name), context))
    return sorted(files)


@contextlib.contextmanager
def docker_engine(
    *, storage_driver: str | None = None, start_timeout: float = 90
) -> Iterator[DockerEngine]:
    """Start a private dockerd, yield a :class:`DockerEngine`, stop it and clean up.

    Raises HarnessUnavailable when something is missing or dockerd will not start.
    """
    problems = engine_problems()
    if problems:
        raise HarnessUnavailable("; ".join(problems))
    cli = docker_cli()
    assert cli is not None
    forced = storage_driver or os.environ.get("EBK_DOCKER_STORAGE_DRIVER") or None
    drivers = (forced,) if forced else STORAGE_DRIVERS
    parent = os.environ.get("EBK_DOCKER_TMPDIR") or tempfile.gettempdir()
    root = Path(tempfile.mkdtemp(prefix="ebk-docker-", dir=parent))
    engine: DockerEngine | None = None
    try:
        failures = []
        for driver in drivers:
            try:
                engine = _start_dockerd(root, cli, driver, start_timeout)
                break
            except HarnessUnavailable as exc:
                failures.append(f"[{driver}] {exc}")
        if engine is None:
            raise HarnessUnavailable("dockerd did not start:\n" + "\n".join(failures))
        yield engine
    finally:
        if engine is not None:
            engine.stop()
        _kill_processes_using(root)
        if os.environ.get("EBK_DOCKER_KEEP") == "1":
            unmount_under(root)
            print(f"[ebk docker harness] kept {root}", file=sys.stderr)
        else:
            remove_tree(root)


def _start_dockerd(root: Path, cli: str, driver: str, timeout: float) -> DockerEngine:
    # A failed attempt may have left mounts/processes: each driver gets its own subdir.
    base = root / driver
    base.mkdir()
    sock = root / "docker.sock"
    if len(str(sock)) > 100:
        raise HarnessUnavailable(f"socket path too long for a unix socket: {sock}")
    sock.unlink(missing_ok=True)
    config = base / "daemon.json"
    config.write_text("{}\n")  # don't read /etc/docker/daemon.json
    log_path = base / "dockerd.log"
    cmd = [
        which_sbin("dockerd") or "dockerd",
        "--data-root",
        str(base / "data"),
        "--exec-root",
        str(base / "exec"),
        "--pidfile",
        str(base / "dockerd.pid"),
        "--config-file",
        str(config),
        "-H",
        f"unix://{sock}",
        "--storage-driver",
        driver,
        *DAEMON_NETWORK_FLAGS,
    ]
    docker_config = root / "client-config"
    docker_config.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{sock}",
        "DOCKER_CONFIG": str(docker_config),  # no ~/.docker credential helpers or contexts
    }
    for var in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_BUILDKIT"):
        env.pop(var, None)
    # dockerd finds containerd/runc/docker-init on PATH.
    env["PATH"] = ":".join(dict.fromkeys([*env.get("PATH", "").split(":"), *_SBIN_DIRS]))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    engine = DockerEngine(
        root=root,
        host=env["DOCKER_HOST"],
        cli=cli,
        storage_driver=driver,
        env=env,
        log_path=log_path,
        process=proc,
    )
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if proc.poll() is not None:
            tail = engine.log_errors()
            engine.stop()
            raise HarnessUnavailable(
                f"dockerd exited {proc.returncode} ({_keep_hint(log_path)}):\n{tail}"
            )
        if sock.exists():
            info = engine.run(
                "info", "--format", "{{.ServerVersion}} {{.Driver}}", check=False, timeout=30
            )
            if info.returncode == 0 and info.stdout.split()[1:2] == [driver]:
                return engine
            last = (info.stderr or info.stdout).strip()
        if time.monotonic() > deadline:
            tail = engine.log_errors()
            engine.stop()
            raise HarnessUnavailable(
                f"dockerd not ready after {timeout:.0f}s ({last}; {_keep_hint(log_path)}):\n{tail}"
            )
        time.sleep(0.25)


def _keep_hint(log_path: Path) -> str:
    if os.environ.get("EBK_DOCKER_KEEP") == "1":
        return f"log {log_path}"
    return "EBK_DOCKER_KEEP=1 keeps the log"


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt.startswith(prefix) or mnt + "/" == prefix:
                found.append(mnt)
    return found


def unmount_under(path: Path) -> None:
    if not path.exists():
        return
    for mnt in sorted(set(_mounts_under(path)), key=len, reverse=True):
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)


def remove_tree(path: Path) -> None:
    unmount_under(path)
    # --one-file-system: never descend into anything still mounted under it.
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)


def _kill_processes_using(root: Path, timeout: float = 10) -> None:
    """Kill what we started and what may outlive dockerd: its containerd and shims.

    Only processes whose command line names our own private temp dir are touched."""
    needle = (str(root).rstrip("/") + "/").encode()
    me = os.getpid()

    def ours() -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
        return pids

    pids = ours()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = ours()
        if not pids:
            return
