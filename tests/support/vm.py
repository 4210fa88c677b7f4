"""Boot Debian's kernel under virtme-ng (vng) and run a shell script in it as root.

The host kernel has no device-mapper, so dm-crypt/LUKS is only testable in a VM. virtme-ng
boots a kernel with the host's root filesystem shared read-only over 9p, with tmpfs-backed
overlays on /etc /usr /var /tmp /home /opt /srv (so those are writable inside and changes are
thrown away at power-off). /work is NOT overlaid: the repo is visible read-only.

    from tests.support.vm import run_in_vm, vm_available, parse_sections
    res = run_in_vm("bash /work/main/scripts/vm/luks_demo.sh", timeout=300)
    res.returncode, res.stdout, res.stderr

How a run works: a fresh host dir ``/tmp/ebk-vm-XXXX`` is shared read-write with the guest at
the same path (``--rwdir``). The script goes there, and a wrapper inside the guest runs it with
its stdout/stderr redirected to files in that dir and its exit code written to ``rc``, so
kernel log lines on the console never mix with the script's output. The same dir is
``$EBK_VM_SHARED`` inside the guest, for passing further result files back;
``$EBK_REPO`` is the repo root (read-only inside).

Acceleration: ``EBK_VM_ACCEL`` = ``auto`` (default) | ``kvm`` | ``tcg``. ``auto`` uses KVM only
when /dev/kvm is usable AND backed by kvm_intel/kvm_amd. The development machines expose
/dev/kvm through ``kvm_pvm`` (nested "PVM"), where a stock Debian kernel never gets past its
decompressor, so there ``auto`` picks TCG (software emulation, ~30-40 s per boot on 2 cores).

Other knobs: ``EBK_VM_VNG`` (path to vng), ``EBK_VM_KERNEL`` (path to a /boot/vmlinuz-*).
:func:`vm_available` returns why a VM cannot boot here; tests pass it to
``tests.support.needs.skip_or_fail`` (CI installs everything, so there a missing piece fails).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VM_SCRIPTS = REPO_ROOT / "scripts" / "vm"

SECTION_MARK = "@@EBK-SECTION@@"
_BEGIN_MARK = "@@EBK-VM-BEGIN@@"
_END_MARK = "@@EBK-VM-END"

# Kernel args that cut TCG boot time roughly in half: crypto self-tests are slow under
# emulation, and udev coldplug would otherwise load drivers for emulated hardware we never use
# (kvm_amd alone takes ~20 s to load under TCG). Nothing needed for dm-crypt/loop/ext4 is listed.
_BLACKLIST = (
    "kvm,kvm_amd,kvm_intel,psmouse,pcspkr,iTCO_wdt,i2c_i801,lpc_ich,ahci,sr_mod,evdev,"
    "serio_raw,i6300esb,button,powernow_k8,acpi_cpufreq,edac_mce_amd"
)
KERNEL_ARGS = f"cryptomgr.notests=1 modprobe.blacklist={_BLACKLIST}"

# Modules the guest must be able to load for the LUKS tests.
_REQUIRED_MODULES = ("drivers/md/dm-crypt.ko", "drivers/md/dm-mod.ko", "drivers/block/loop.ko")


class VMError(RuntimeError):
    """The VM did not produce a result (boot failure, timeout, vng error)."""


@dataclass(frozen=True)
class VMResult:
    returncode: int
    stdout: str
    stderr: str
    duration: float = 0.0  # seconds from launching vng to its exit
    console: str = ""  # vng/qemu's own output (kernel log too when verbose=True)
    accel: str = ""  # "kvm" or "tcg"

    def sections(self) -> dict[str, str]:
        return parse_sections(self.stdout)


def parse_sections(text: str) -> dict[str, str]:
    """Split output on ``@@EBK-SECTION@@ NAME`` lines (see scripts/vm/luks_lib.sh)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(SECTION_MARK):
            name = line[len(SECTION_MARK) :].strip()
            current = out.setdefault(name, [])
        elif current is not None:
            current.append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def find_vng() -> Path | None:
    env = os.environ.get("EBK_VM_VNG")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT / ".venv" / "bin" / "vng", Path(sys.executable).parent / "vng"]
    which = shutil.which("vng")
    if which:
        candidates.append(Path(which))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def _version_key(ver: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", ver)]


def _modules_ok(ver: str) -> bool:
    base = Path("/lib/modules") / ver / "kernel"
    return all(any(base.glob(f"{m}*")) for m in _REQUIRED_MODULES)


def find_kernel() -> tuple[Path, str] | None:
    """Newest /boot/vmlinuz-<ver> whose /lib/modules/<ver> has dm-crypt, dm-mod and loop."""
    env = os.environ.get("EBK_VM_KERNEL")
    if env:
        p = Path(env)
        ver = p.name.removeprefix("vmlinuz-")
        return (p, ver) if p.is_file() else None
    found = []
    for p in Path("/boot").glob("vmlinuz-*"):
        ver = p.name.removeprefix("vmlinuz-")
        if _modules_ok(ver):
            found.append((p, ver))
    if not found:
        return None
    return max(found, key=lambda pv: _version_key(pv[1]))


def kvm_usable() -> bool:
    """True if /dev/kvm is accessible and backed by real VT-x/AMD-V KVM (not kvm_pvm)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    return Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()


def _accel(requested: str | None) -> str:
    acc = (requested or os.environ.get("EBK_VM_ACCEL") or "auto").lower()
    if acc == "auto":
        return "kvm" if kvm_usable() else "tcg"
    if acc not in ("kvm", "tcg"):
        raise ValueError(f"EBK_VM_ACCEL must be auto, kvm or tcg, not {acc!r}")
    return acc


def _unavailable_reason() -> str | None:
    if sys.platform != "linux":
        return "the VM tests need Linux"
    if find_vng() is None:
        return "vng (virtme-ng) not found: pip install virtme-ng, or set EBK_VM_VNG"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not found: apt-get install qemu-system-x86"
    if shutil.which("busybox") is None and not Path("/bin/busybox").exists():
        return "busybox not found (virtme-ng needs a static one): apt-get install busybox-static"
    kern = find_kernel()
    if kern is None:
        return (
            "no /boot/vmlinuz-* with dm-crypt/loop modules in /lib/modules/<ver>: "
            "apt-get install linux-image-amd64"
        )
    if not os.access(kern[0], os.R_OK):
        return f"{kern[0]} is not readable (run as root)"
    for tool in ("cryptsetup", "losetup", "mkfs.ext4", "lsblk"):
        if not any(Path(d, tool).exists() for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin")):
            return f"{tool} not found: apt-get install cryptsetup-bin util-linux e2fsprogs"
    return None


def vm_available() -> str | None:
    """None if VMs can be booted, else the reason why not.

    Tests hand the reason to tests.support.needs.skip_or_fail: under CI=true a missing
    piece fails, since CI must run these tests.
    """
    return _unavailable_reason()


def _wrapper(shared: Path) -> str:
    q = shlex.quote
    return f"""#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export EBK_REPO={q(str(REPO_ROOT))} EBK_VM_SHARED={q(str(shared))} HOME=/root LANG=C.UTF-8
cd "$EBK_VM_SHARED" || exit 99
echo {_BEGIN_MARK}
/bin/bash "$EBK_VM_SHARED/script.sh" > "$EBK_VM_SHARED/stdout" 2> "$EBK_VM_SHARED/stderr" \
    < /dev/null
rc=$?
echo "$rc" > "$EBK_VM_SHARED/rc.tmp" && mv "$EBK_VM_SHARED/rc.tmp" "$EBK_VM_SHARED/rc"
sync
echo "{_END_MARK} rc=$rc@@"
exit "$rc"
"""


def vng_command(
    shared: Path,
    *,
    memory: str = "1G",
    cpus: int | None = None,
    accel: str = "tcg",
    verbose: bool = False,
) -> list[str]:
    """The vng command line used by run_in_vm (exposed for debugging and the report)."""
    vng = find_vng()
    kern = find_kernel()
    if vng is None or kern is None:
        raise VMError(_unavailable_reason() or "vng or kernel missing")
    cmd = [
        str(vng),
        "--run",
        str(kern[0]),
        "--user",
        "root",
        "--cwd",
        "/",
        "--force-9p",
        "--memory",
        memory,
        "--cpus",
        str(cpus or min(os.cpu_count() or 1, 4)),
        f"--rwdir={shared}",
        f"--append={KERNEL_ARGS}",
        "--qemu-opts=-nodefaults",
    ]
    if accel == "tcg":
        cmd.append("--disable-kvm")
    if verbose:
        cmd.append("--verbose")
    cmd += ["--exec", f"/bin/bash {shared}/run.sh"]
    return cmd


def run_in_vm(
    script: str,
    *,
    timeout: float = 300,
    memory: str = "1G",
    cpus: int | None = None,
    accel: str | None = None,
    verbose: bool = False,
    keep: bool = False,
    prepare: Callable[[Path], None] | None = None,
) -> VMResult:
    """Boot the VM, run ``script`` (bash source text) as root inside, return its result.

    Raises VMError if the VM gives no result (boot failure or ``timeout`` seconds elapsed).
    ``verbose=True`` puts the kernel log into VMResult.console (useful when a boot fails).
    ``keep=True`` leaves the shared /tmp/ebk-vm-* dir on the host.
    ``prepare(shared_dir)`` runs on the host before boot, to put input files in the dir the
    script sees as ``$EBK_VM_SHARED`` (e.g. ``host_pg_template``).
    """
    acc = _accel(accel)
    shared = Path(tempfile.mkdtemp(prefix="ebk-vm-", dir="/tmp"))
    try:
        if prepare is not None:
            prepare(shared)
        (shared / "script.sh").write_text(script)
        (shared / "run.sh").write_text(_wrapper(shared))
        shared.chmod(0o777)  # the guest may drop to other users (postgres) in the dir
        cmd = vng_command(shared, memory=memory, cpus=cpus, accel=acc, verbose=verbose)
        env = dict(os.environ)
        # vng runs virtme-run and friends from its own bin dir.
        env["PATH"] = f"{Path(cmd[0]).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            start_new_session=True,  # own process group: a timeout kills vng and qemu
        )
        try:
            console_b, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            console_b, _ = proc.communicate()
            raise VMError(
                f"VM timed out after {timeout:.0f}s ({acc}); console tail:\n"
                + console_b.decode(errors="replace")[-4000:]
            ) from None
        duration = time.monotonic() - start
        console = console_b.decode(errors="replace")
        rc_file = shared / "rc"
        if not rc_file.exists():
            m = re.search(re.escape(_END_MARK) + r" rc=(\d+)@@", console)
            if m is None:
                raise VMError(
                    f"VM gave no result (vng exit {proc.returncode}, {acc}, {duration:.0f}s); "
                    f"console tail:\n{console[-4000:]}"
                )
            rc = int(m.group(1))
        else:
            rc = int(rc_file.read_text().strip())

        def read(name: str) -> str:
            p = shared / name
            return p.read_text(errors="replace") if p.exists() else ""

        return VMResult(rc, read("stdout"), read("stderr"), duration, console, acc)
    finally:
        if not keep:
            shutil.rmtree(shared, ignore_errors=True)


def host_pg_template(shared: Path, name: str = "pgtemplate.tar") -> Path:
    """initdb a fresh PostgreSQL 15 cluster on the host (as postgres) and tar it into
    ``shared/name``, for ``ebk_pg_start DATADIR $EBK_VM_SHARED/pgtemplate.tar`` in the guest.

    Usable as ``run_in_vm(..., prepare=host_pg_template)``: initdb takes ~2 s on the host
    against ~1 min under TCG. Same settings as luks_lib.sh's in-guest initdb.
    """
    pg_bin = Path(os.environ.get("EBK_PG_BIN", "/usr/lib/postgresql/15/bin"))
    work = Path(tempfile.mkdtemp(prefix="ebk-vm-pg-", dir="/tmp"))
    try:
        shutil.chown(work, "postgres", "postgres")
        data = work / "data"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(pg_bin / "initdb"), "-D", str(data),
             "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, cwd="/",
        )  # fmt: skip
        out = shared / name
        subprocess.run(["tar", "-C", str(data), "-cf", str(out), "."], check=True)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def script_path(name: str) -> Path:
    """Path of a script under scripts/vm/ (visible at the same path inside the guest)."""
    return VM_SCRIPTS / name


if __name__ == "__main__":  # python -m tests.support.vm 'lsblk; uname -r'
    why = vm_available()
    if why:
        sys.exit(f"VM unavailable: {why}")
    args = sys.argv[1:]
    verbose = bool(args) and args[0] == "-v"
    res = run_in_vm(" ".join(args[verbose:]) or "uname -a", verbose=verbose)
    if verbose:
        sys.stderr.write(res.console)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    print(f"[rc={res.returncode} {res.accel} {res.duration:.1f}s]", file=sys.stderr)
    sys.exit(res.returncode)
