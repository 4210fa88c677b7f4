"""Facts about the host a benchmark ran on, so a reader can judge the numbers:
cores, memory, load, and whether the CPU and kernel have hardware AES."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Kernel cipher names that fscrypt (xts, cts) and dm-crypt (xts) use.
CIPHERS = ("aes", "xts(aes)", "cts(cbc(aes))", "adiantum(xchacha12,aes)")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_has_aes(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """The CPU's AES instructions (x86 'aes' flag, arm64 'aes' feature); None if unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return "aes" in value.split()
    return None


def crypto_drivers(proc_crypto: Path = Path("/proc/crypto")) -> dict[str, str]:
    """Highest-priority kernel driver per cipher: 'xts-aes-aesni' means AES-NI is used,
    'xts(ecb(aes-generic))' or 'aes-generic' means software AES."""
    try:
        text = proc_crypto.read_text()
    except OSError:
        return {}
    best: dict[str, tuple[int, str]] = {}
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        name, driver = fields.get("name", ""), fields.get("driver", "")
        if name in CIPHERS and driver:
            priority = int(fields.get("priority", "0") or 0)
            if name not in best or priority > best[name][0]:
                best[name] = (priority, driver)
    return {name: driver for name, (_, driver) in sorted(best.items())}


def host_facts() -> dict[str, object]:
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count() or 1,
        "ram_bytes": ram_bytes(),
        "cpu_aes": cpu_has_aes(),
        "crypto_drivers": crypto_drivers(),
    }
