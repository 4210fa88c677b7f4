"""The block-device stack under a filesystem, read from sysfs.

A filesystem sits on a device that may itself sit on others: LVM on LUKS on a
partition, md RAID over several LUKS volumes, a loop device over a file.  The
tree is built from /sys/class/block/<dev>/slaves (and a loop device's
backing_file); the sysfs root is a parameter so parsing is testable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_DEPTH = 16


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class BlockDevice:
    """One layer of the stack; ``children`` are the devices it is built on."""

    name: str
    kind: str
    dm_uuid: str = ""
    dm_name: str = ""
    md_level: str = ""
    partition_of: str = ""
    backing_file: str = ""
    vendor: str = ""
    model: str = ""
    serial: str = ""
    children: list[BlockDevice] = field(default_factory=list)

    @property
    def crypt_type(self) -> str:
        """LUKS2, LUKS1, PLAIN, TCRYPT, BITLK... for a dm-crypt target; else ''."""
        if self.dm_uuid.startswith("CRYPT-"):
            return self.dm_uuid.split("-")[1]
        return ""

    def describe(self) -> str:
        if self.kind == "dm-crypt":
            return f"{self.name} (dm-crypt {self.crypt_type}, {self.dm_name})"
        if self.kind == "lvm":
            return f"{self.name} (LVM {self.dm_name})"
        if self.kind == "md":
            return f"{self.name} (md {self.md_level})"
        if self.kind == "partition":
            return f"{self.name} (partition of {self.partition_of})"
        if self.kind == "loop":
            return f"{self.name} (loop over {self.backing_file or '?'})"
        if self.kind == "dm":
            return f"{self.name} (device-mapper {self.dm_name})"
        # virtio reports a PCI vendor id (0x1af4) rather than a name: not worth showing
        ident = " ".join(x for x in (self.vendor, self.model) if x and not x.startswith("0x"))
        return f"{self.name} ({ident})" if ident else self.name

    def flatten(self) -> list[str]:
        out = [self.describe()]
        for child in self.children:
            out.extend(f"  {line}" for line in child.flatten())
        return out


def _dm_kind(uuid: str) -> str:
    if uuid.startswith("CRYPT-"):
        return "dm-crypt"
    if uuid.startswith("LVM-"):
        return "lvm"
    return "dm"


class SysfsBlock:
    """Reads the device tree below one device number."""

    def __init__(self, root: Path = Path("/sys")) -> None:
        self.root = root

    def name_for(self, major: int, minor: int) -> str | None:
        link = self.root / "dev" / "block" / f"{major}:{minor}"
        try:
            return Path(os.readlink(link)).name
        except OSError:
            return None

    def node(self, name: str) -> Path:
        return self.root / "class" / "block" / name

    def device(self, name: str, depth: int = 0) -> BlockDevice:
        node = self.node(name)
        if depth > MAX_DEPTH:
            return BlockDevice(name, "unknown")
        if (node / "partition").exists():
            parent = Path(os.path.realpath(node)).parent.name
            dev = BlockDevice(name, "partition", partition_of=parent)
            dev.children.append(self.device(parent, depth + 1))
            return dev
        dm_uuid = _read(node / "dm" / "uuid")
        dm_name = _read(node / "dm" / "name")
        if dm_uuid or dm_name or name.startswith("dm-"):
            dev = BlockDevice(name, _dm_kind(dm_uuid), dm_uuid=dm_uuid, dm_name=dm_name)
        elif (node / "md").is_dir():
            dev = BlockDevice(name, "md", md_level=_read(node / "md" / "level"))
        elif (node / "loop").is_dir() or name.startswith("loop"):
            dev = BlockDevice(name, "loop", backing_file=_read(node / "loop" / "backing_file"))
        else:
            dev = BlockDevice(
                name,
                "disk",
                vendor=_read(node / "device" / "vendor"),
                model=_read(node / "device" / "model"),
                serial=_read(node / "device" / "serial"),
            )
        try:
            slaves = sorted(p.name for p in (node / "slaves").iterdir())
        except OSError:
            slaves = []
        dev.children.extend(self.device(s, depth + 1) for s in slaves)
        return dev
