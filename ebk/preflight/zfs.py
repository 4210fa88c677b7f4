"""ZFS native encryption: `zfs get` on the dataset a path lives in.

A ZFS mount has an anonymous device number, so the block stack cannot be read
from mountinfo; when the dataset is not natively encrypted, the pool's vdevs
(`zpool list -vHP`) are returned so their own stacks (e.g. LUKS) can be checked.
"""

from __future__ import annotations

import subprocess

from ebk.preflight.commands import Runner
from ebk.preflight.model import Evidence, Status
from ebk.preflight.mountinfo import Mount

PROPS = "encryption,keylocation,keyformat,keystatus,encryptionroot"


def parse_zfs_get(text: str) -> dict[str, str]:
    """`zfs get -H -o property,value` output: one tab-separated pair a line."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        prop, sep, value = line.partition("\t")
        if sep:
            out[prop.strip()] = value.strip()
    return out


def parse_vdevs(text: str) -> list[str]:
    """Device paths from `zpool list -vHP POOL` (lines whose first field is /dev/...)."""
    return [f.strip().split("\t")[0] for f in text.splitlines() if f.strip().startswith("/dev/")]


def zfs_evidence(mount: Mount, run: Runner) -> tuple[Evidence, list[str]]:
    dataset = mount.source
    try:
        props = parse_zfs_get(run(["zfs", "get", "-H", "-o", "property,value", PROPS, dataset]))
    except (OSError, subprocess.SubprocessError) as exc:
        return Evidence(Status.UNKNOWN, "zfs", f"cannot run `zfs get` for {dataset}: {exc}"), []
    encryption = props.get("encryption", "")
    if encryption and encryption != "off":
        where = f"keyformat {props.get('keyformat', '?')} at {props.get('keylocation', '?')}"
        if props.get("encryptionroot", "-") not in ("", "-", dataset):
            where += f" (inherited from {props['encryptionroot']})"
        if props.get("keystatus"):
            where += f", key {props['keystatus']}"
        return (
            Evidence(
                Status.ENCRYPTED,
                "zfs native encryption",
                f"dataset {dataset} has encryption={encryption}",
                encryption,
                where,
            ),
            [],
        )
    if encryption != "off":
        return Evidence(
            Status.UNKNOWN, "zfs", f"`zfs get` did not report encryption for {dataset}"
        ), []
    pool = dataset.split("/", 1)[0]
    try:
        vdevs = parse_vdevs(run(["zpool", "list", "-v", "-H", "-P", pool]))
    except (OSError, subprocess.SubprocessError):
        vdevs = []
    return (
        Evidence(
            Status.UNENCRYPTED,
            "zfs",
            f"dataset {dataset} has encryption=off (pool {pool}'s vdevs checked below)",
        ),
        vdevs,
    )
