"""A registry-free Debian base image for the container tests: ``ebk-base:bookworm``.

:func:`ensure_base_image` makes it with ``debootstrap --variant=minbase`` from the same
Debian mirror as the host's apt, trimmed like ``debian:bookworm-slim``, and ``docker
import``s it into an engine of tests/support/docker_engine.py.  The rootfs tarball is
cached in :func:`cache_dir`, so only the first run pays for debootstrap.

Environment knobs:

``EBK_DOCKER_CACHE_DIR``      where the base tarball is kept (default
                              ``$EBK_CACHE_DIR/docker``, else ``<repo>/.cache/docker``)
``EBK_DEBIAN_MIRROR`` / ``EBK_DEBIAN_SECURITY_MIRROR``  override the mirrors read from apt
``EBK_DOCKER_REBUILD_BASE=1`` ignore the cached tarball and debootstrap again

Run ``python -m tests.support.docker_image smoke`` for a manual check with timings, or
``python -m tests.support.docker_image base`` to fill the tarball cache ahead of the tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.docker_engine import (
    REPO,
    DockerEngine,
    HarnessUnavailable,
    docker_engine,
    remove_tree,
    unmount_under,
    which_sbin,
)

SUITE = "bookworm"
BASE_IMAGE = f"ebk-base:{SUITE}"
# Bump when the rootfs recipe (_customize_rootfs, the debootstrap flags, the import
# changes) changes: it is part of the cache file name, so old tarballs are not reused.
BASE_RECIPE = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def cache_dir() -> Path:
    explicit = os.environ.get("EBK_DOCKER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    general = os.environ.get("EBK_CACHE_DIR")
    return Path(general) / "docker" if general else REPO / ".cache" / "docker"


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
    debootstrap = which_sbin("debootstrap")
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
        unmount_under(target)  # debootstrap unmounts proc/sys itself; be sure
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
        remove_tree(work)


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
