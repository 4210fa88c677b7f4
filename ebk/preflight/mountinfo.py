"""Which mount holds a path: /proc/self/mountinfo, parsed without external tools.

mountinfo (not /proc/mounts) because it carries the device number and the root
of bind mounts, so a bind-mounted or symlinked directory resolves to the real
filesystem and block device underneath.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str
    super_options: str

    @property
    def is_bind(self) -> bool:
        """A bind mount of a subdirectory shows a root other than '/'."""
        return self.root != "/"

    def super_option(self, name: str) -> str | None:
        for item in self.super_options.split(","):
            key, sep, value = item.partition("=")
            if key == name:
                return value if sep else ""
        return None


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text; malformed lines are skipped rather than fatal."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            major, minor = (int(x) for x in fields[2].split(":"))
            mounts.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    major=major,
                    minor=minor,
                    root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    options=fields[5],
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                    super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
                )
            )
        except (ValueError, IndexError):
            continue
    return mounts


def read_mountinfo(path: Path = Path("/proc/self/mountinfo")) -> list[Mount]:
    return parse_mountinfo(path.read_text())


def _contains(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def mount_for(path: str, mounts: list[Mount], st_dev: int | None = None) -> Mount | None:
    """The mount that holds ``path`` (already resolved): longest mount point, topmost.

    Later lines of mountinfo are mounted over earlier ones at the same point;
    when the device number of the path is known, a mount with that device wins.
    """
    best: Mount | None = None
    for mount in mounts:
        if not _contains(mount.mount_point, path):
            continue
        if best is None or len(mount.mount_point) >= len(best.mount_point):
            best = mount
    if best is None or st_dev is None:
        return best
    same_point = [m for m in mounts if m.mount_point == best.mount_point]
    matching = [m for m in same_point if os.makedev(m.major, m.minor) == st_dev]
    return matching[-1] if matching else best


def mounts_below(path: str, mounts: list[Mount]) -> list[Mount]:
    """Mounts inside ``path`` (an unencrypted disk mounted inside PGDATA must not hide)."""
    prefix = path.rstrip("/") + "/"
    seen: dict[str, Mount] = {}
    for mount in mounts:
        if mount.mount_point.startswith(prefix):
            seen[mount.mount_point] = mount
    return list(seen.values())
