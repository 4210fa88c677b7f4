"""A private Docker engine and a registry-free base image for ebk's container tests.

What this machine (and CI) has: Debian 12, root, Debian's ``docker.io`` engine
(dockerd 20.10 with its own managed containerd, runc, cgroup v1), no registry
reachable but Debian's mirror and PyPI.  So:

* :func:`docker_engine` starts a throwaway ``dockerd`` with its own ``--data-root``,
  ``--exec-root``, pidfile, config file and socket under one temp dir, with host-wide
  networking left alone (``--iptables=false --ip-forward=false --bridge=none``).
  Containers and builds therefore use ``--network host``: :meth:`DockerEngine.build`
  and :meth:`DockerEngine.run_container` pass it by default.  A container reaches a
  server the tests started on 127.0.0.1 directly.
* :func:`ensure_base_image` makes ``ebk-base:bookworm`` with ``debootstrap
  --variant=minbase`` from the same Debian mirror as the host's apt, trimmed like
  ``debian:bookworm-slim``, and ``docker import``.  The rootfs tarball is cached in
  :func:`cache_dir`, so only the first run pays for debootstrap.

Environment knobs:

``EBK_DOCKER_CACHE_DIR``      where the base tarball is kept (default
                              ``$EBK_CACHE_DIR/docker``, else ``<repo>/.cache/docker``)
``EBK_DOCKER_STORAGE_DRIVER`` force a storage driver (default: overlay2, then vfs)
``EBK_DOCKER_TMPDIR``         parent of the engine's temp dir (default: ``$TMPDIR`` or /tmp);
                              keep it short, the socket path must fit in 107 bytes
``EBK_DOCKER_CLI``            docker client to use (default /usr/bin/docker, Debian's,
                              same version as the engine; else ``docker`` on PATH)
``EBK_DOCKER_KEEP=1``         leave the engine's temp dir (logs, data) after stopping
``EBK_DEBIAN_MIRROR`` / ``EBK_DEBIAN_SECURITY_MIRROR``  override the mirrors read from apt
``EBK_DOCKER_REBUILD_BASE=1`` ignore the cached tarball and debootstrap again

Run ``python tests/docker/harness.py smoke`` for a manual check with timings, or
``python tests/docker/harness.py base`` to fill the tarball cache ahead of the tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SUITE = "bookworm"
BASE_IMAGE = f"ebk-base:{SUITE}"
# Bump when the rootfs recipe (_customize_rootfs, the debootstrap flags, the import
# changes) changes: it is part of the cache file name, so old tarballs are not reused.
BASE_RECIPE = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

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


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    explicit = os.environ.get("EBK_DOCKER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    general = os.environ.get("EBK_CACHE_DIR")
    return Path(general) / "docker" if general else REPO / ".cache" / "docker"


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _which(name: str) -> str | None:
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
        return explicit if _which(explicit) else None
    # Debian's client matches the engine (20.10, API 1.41) and can also drive the
    # engine's built-in BuildKit (DOCKER_BUILDKIT=1).  A newer client on PATH works
    # too, but only with the legacy builder unless the buildx plugin is installed.
    debian = Path("/usr/bin/docker")
    if debian.is_file() and os.access(debian, os.X_OK):
        return str(debian)
    return _which("docker")


def engine_problems() -> list[str]:
    """What stops :func:`docker_engine` from starting here (empty list: nothing)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root: this harness runs dockerd itself, which needs root")
    for tool in ("dockerd", "containerd", "runc"):
        if _which(tool) is None:
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
            _unmount_under(root)
            print(f"[ebk docker harness] kept {root}", file=sys.stderr)
        else:
            _remove_tree(root)


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
        _which("dockerd") or "dockerd",
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


def _unmount_under(path: Path) -> None:
    if not path.exists():
        return
    for mnt in sorted(set(_mounts_under(path)), key=len, reverse=True):
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)


def _remove_tree(path: Path) -> None:
    _unmount_under(path)
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


# --------------------------------------------------------------------------------------
# The base image
# --------------------------------------------------------------------------------------


def apt_mirrors(sources_dir: Path = Path("/etc/apt")) -> tuple[str, str]:
    """(main mirror, security mirror) that the host's apt uses for bookworm, with
    EBK_DEBIAN_MIRROR / EBK_DEBIAN_SECURITY_MIRROR taking precedence."""
    main = security = None
    files = [sources_dir / "sources.list"]
    d = sources_dir / "sources.list.d"
    if d.is_dir():
        files += sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uris, suites in _parse_sources(text, deb822=path.suffix == ".sources"):
            for uri in uris:
                if not re.match(r"https?://", uri):
                    continue
                if main is None and SUITE in suites:
                    main = uri.rstrip("/")
                if security is None and f"{SUITE}-security" in suites:
                    security = uri.rstrip("/")
    return (
        os.environ.get("EBK_DEBIAN_MIRROR") or main or DEFAULT_MIRROR,
        os.environ.get("EBK_DEBIAN_SECURITY_MIRROR") or security or DEFAULT_SECURITY_MIRROR,
    )


def _parse_sources(text: str, *, deb822: bool) -> Iterator[tuple[list[str], list[str]]]:
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                yield fields.get("uris", "").split(), fields.get("suites", "").split()
        return
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        parts = re.sub(r"\[[^\]]*\]", " ", line).split()
        if len(parts) >= 3 and parts[0] == "deb":
            yield [parts[1]], [parts[2]]


def base_tarball_path(mirror: str, security: str) -> Path:
    arch = (
        subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or os.uname().machine
    )
    key = hashlib.sha256(f"{mirror} {security}".encode()).hexdigest()[:8]
    return cache_dir() / f"ebk-base-{SUITE}-{arch}-r{BASE_RECIPE}-{key}.tar.gz"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_base_tarball(
    *, force: bool | None = None, timings: dict[str, float] | None = None
) -> Path:
    """The cached rootfs tarball, debootstrapped first if missing."""
    if force is None:
        force = os.environ.get("EBK_DOCKER_REBUILD_BASE") == "1"
    mirror, security = apt_mirrors()
    path = base_tarball_path(mirror, security)
    with _locked(path.parent / ".lock"):
        if path.is_file() and not force:
            return path
        _build_base_tarball(path, mirror, security, timings)
    return path


def _build_base_tarball(
    path: Path, mirror: str, security: str, timings: dict[str, float] | None
) -> None:
    debootstrap = _which("debootstrap")
    if debootstrap is None:
        raise HarnessUnavailable("debootstrap not found (apt-get install debootstrap)")
    if not DEBIAN_KEYRING.is_file():
        raise HarnessUnavailable(
            f"{DEBIAN_KEYRING} missing (apt-get install debian-archive-keyring)"
        )
    if os.geteuid() != 0:
        raise HarnessUnavailable("not root: debootstrap needs root")
    work = Path(tempfile.mkdtemp(prefix=".rootfs-", dir=path.parent))
    target = work / "rootfs"
    log = work / "debootstrap.log"
    try:
        t0 = time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--keyring={DEBIAN_KEYRING}",
                    SUITE,
                    str(target),
                    mirror,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
            )
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise HarnessUnavailable(
                f"debootstrap {SUITE} from {mirror} failed ({proc.returncode}):\n{tail}"
            )
        t1 = time.monotonic()
        _unmount_under(target)  # debootstrap unmounts proc/sys itself; be sure
        _customize_rootfs(target, mirror, security)
        tmp = path.with_name(path.name + ".tmp")
        subprocess.run(
            [
                "tar",
                "-C",
                str(target),
                "--numeric-owner",
                "--xattrs",
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "--exclude=./run/*",
                "--exclude=./tmp/*",
                "-I",
                "gzip -1",
                "-cf",
                str(tmp),
                ".",
            ],
            check=True,
            capture_output=True,
        )
        os.replace(tmp, path)
        if timings is not None:
            timings["debootstrap"] = t1 - t0
            timings["trim_and_tar"] = time.monotonic() - t1
    finally:
        _remove_tree(work)


def _customize_rootfs(root: Path, mirror: str, security: str) -> None:
    """Trim and configure like debian:bookworm-slim."""
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
        f"Signed-By: {DEBIAN_KEYRING}\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n"
        f"Signed-By: {DEBIAN_KEYRING}\n"
    )
    (root / "etc/dpkg/dpkg.cfg.d/docker-excludes").write_text(
        "path-exclude /usr/share/doc/*\n"
        "path-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\n"
        "path-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\n"
        "path-include /usr/share/locale/locale.alias\n"
        "path-exclude /usr/share/lintian/*\n"
    )
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    )
    policy = root / "usr/sbin/policy-rc.d"  # no service starts during image builds
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for p in root.glob(pattern):
            if p.is_file() or p.is_symlink():
                p.unlink()
            elif p.is_dir() and p.name != "partial":
                shutil.rmtree(p)
    for p in (root / "var/log").rglob("*"):
        if p.is_file():
            p.unlink()
    doc = root / "usr/share/doc"
    for p in sorted(doc.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            with contextlib.suppress(OSError):
                p.rmdir()  # only the empty ones
        elif p.name != "copyright":
            p.unlink()
    for sub in ("usr/share/man", "usr/share/info"):
        for p in (root / sub).glob("*"):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in (root / "usr/share/locale").glob("*"):
        if p.name != "locale.alias":
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    # Docker bind-mounts its own at run time.
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/hostname").write_text("localhost\n")


def ensure_base_image(
    engine: DockerEngine, *, force: bool = False, timings: dict[str, float] | None = None
) -> str:
    """Make ``ebk-base:bookworm`` exist in ``engine``; return its tag."""
    if not force and engine.image_exists(BASE_IMAGE):
        return BASE_IMAGE
    tarball = ensure_base_tarball(force=force or None, timings=timings)
    t0 = time.monotonic()
    engine.run(
        "import",
        "--change",
        'CMD ["bash"]',
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--message",
        f"debootstrap --variant=minbase {SUITE}, ebk recipe r{BASE_RECIPE}",
        str(tarball),
        BASE_IMAGE,
        timeout=600,
    )
    if timings is not None:
        timings["import"] = time.monotonic() - t0
    return BASE_IMAGE


# --------------------------------------------------------------------------------------
# A throwaway PostgreSQL on the host's loopback, for containers to back up
# --------------------------------------------------------------------------------------

PG_BIN = Path(os.environ.get("EBK_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass(frozen=True)
class HostPostgres:
    host: str
    port: int
    user: str
    datadir: Path

    @property
    def dsn(self) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname=postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def host_postgres(*, settings: Mapping[str, str] | None = None) -> Iterator[HostPostgres]:
    """initdb + pg_ctl start a PostgreSQL 15 on 127.0.0.1:<free port>, trust auth, as the
    ``postgres`` user when we are root.  Containers on ``--network host`` reach it."""
    for tool in ("initdb", "pg_ctl"):
        if not (PG_BIN / tool).is_file():
            raise HarnessUnavailable(f"{PG_BIN / tool} missing (apt-get install postgresql-15)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if _which("runuser") is None:
            raise HarnessUnavailable("runuser not found")
        as_user = ["runuser", "-u", "postgres", "--"]
    work = Path(tempfile.mkdtemp(prefix="ebk-pg-"))
    if as_user:
        shutil.chown(work, "postgres", "postgres")
    data = work / "data"
    port = free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {work}"
    for key, value in (settings or {}).items():
        opts += f" -c {key}={value}"
    started = False
    try:
        subprocess.run(
            [
                *as_user,
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *as_user,
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(work / "server.log"),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
        started = True
        yield HostPostgres(host="127.0.0.1", port=port, user="postgres", datadir=data)
    finally:
        if started:
            subprocess.run(
                [
                    *as_user,
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Manual use
# --------------------------------------------------------------------------------------


def _main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("base", help="debootstrap the base tarball into the cache if missing")
    smoke = sub.add_parser("smoke", help="start an engine, import the base, run a container")
    smoke.add_argument("--dockerfile", help="also build this Dockerfile with the repo as context")
    smoke.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    args = parser.parse_args(argv)

    timings: dict[str, float] = {}
    if args.cmd == "base":
        print(ensure_base_tarball(timings=timings), timings)
        return 0
    t0 = time.monotonic()
    with docker_engine() as engine:
        timings["engine_start"] = time.monotonic() - t0
        print(f"engine: {engine.host} driver={engine.storage_driver} cli={engine.cli}")
        ensure_base_image(engine, timings=timings)
        print(engine.run_container(BASE_IMAGE, "cat", "/etc/debian_version").stdout.strip())
        if args.dockerfile:
            t1 = time.monotonic()
            build_args = dict(kv.split("=", 1) for kv in args.build_arg)
            build_args.setdefault("BASE_IMAGE", BASE_IMAGE)
            try:
                engine.build(tag="ebk:smoke", dockerfile=args.dockerfile, build_args=build_args)
            finally:
                timings["build"] = time.monotonic() - t1
            print(engine.run("images").stdout)
    print({k: round(v, 1) for k, v in timings.items()})
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
