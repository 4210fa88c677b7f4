"""One path -> its mount -> its filesystem and block-device stack -> a verdict.

Every detector adds evidence; a path is encrypted when any layer proves it
(fscrypt policy, crypto filesystem, a dm-crypt layer on every leg of the block
stack, an encrypted cloud disk, an encrypting StorageClass).  All seams (sysfs,
/dev, mountinfo, commands, cloud and Kubernetes endpoints) are attributes so
tests can point them elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ebk.config import PreflightConfig
from ebk.preflight.blockdev import BlockDevice, SysfsBlock
from ebk.preflight.cloud_aws import EbsDetector
from ebk.preflight.cloud_azure import AzureDetector
from ebk.preflight.cloud_gce import GceDetector
from ebk.preflight.commands import Runner, run_command
from ebk.preflight.dmcrypt import crypt_evidence
from ebk.preflight.fscrypt import fscrypt_evidence
from ebk.preflight.fusecrypt import fuse_crypto_evidence
from ebk.preflight.kubernetes import KubernetesDetector
from ebk.preflight.model import Evidence, PathVerdict, Status, Target
from ebk.preflight.mountinfo import Mount, mount_for, read_mountinfo
from ebk.preflight.zfs import zfs_evidence

MAX_NESTING = 6
NETWORK_FS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "9p",
    "virtiofs",
    "ceph",
    "glusterfs",
    "fuse.sshfs",
    "fuse.s3fs",
    "fuse.glusterfs",
    "lustre",
    "gpfs",
    "afs",
)
MEMORY_FS = ("tmpfs", "ramfs")


class DiskDetector(Protocol):
    def applies(self, disk: BlockDevice) -> bool: ...

    def evidence(self, disk: BlockDevice) -> Evidence: ...


def nearest_existing(path: Path) -> Path:
    """A path yet to be created inherits the storage (and fscrypt policy) of its parent."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


@dataclass
class Inspector:
    """Holds the seams; ``inspect(target)`` gives a PathVerdict."""

    sysfs: Path = Path("/sys")
    dev: Path = Path("/dev")
    mountinfo: Path = Path("/proc/self/mountinfo")
    run: Runner = run_command
    disk_detectors: list[DiskDetector] = field(default_factory=list)
    kubernetes: KubernetesDetector | None = None
    _mounts: list[Mount] | None = None

    @classmethod
    def from_config(
        cls, cfg: PreflightConfig, environ: Mapping[str, str] | None = None
    ) -> Inspector:
        environ = os.environ if environ is None else environ
        detectors: list[DiskDetector] = []
        if cfg.cloud:
            detectors = [
                EbsDetector(
                    endpoint_url=cfg.ec2_endpoint_url, region=cfg.aws_region, timeout=cfg.timeout
                ),
                GceDetector(timeout=cfg.timeout),
                AzureDetector(timeout=cfg.timeout),
            ]
        k8s = KubernetesDetector.in_cluster(environ, cfg.timeout) if cfg.kubernetes else None
        return cls(disk_detectors=detectors, kubernetes=k8s)

    def mounts(self) -> list[Mount]:
        if self._mounts is None:
            self._mounts = read_mountinfo(self.mountinfo)
        return self._mounts

    # -- paths -------------------------------------------------------------

    def inspect(self, target: Target, depth: int = 0) -> PathVerdict:
        verdict = PathVerdict(target)
        if not target.path:
            verdict.evidence.append(
                Evidence(Status.UNKNOWN, "path", target.unresolved or target.label or target.role)
            )
            return verdict
        path = Path(target.path)
        if not path.exists():
            if target.must_exist:
                verdict.evidence.append(
                    Evidence(
                        Status.UNKNOWN,
                        "path",
                        f"{path} does not exist on this host (run preflight where the database "
                        "runs, with access to its directories)",
                    )
                )
                return verdict
            path = nearest_existing(path)
            verdict.note = f"does not exist yet; checked {path}, where it will be created"
        resolved = os.path.realpath(path)
        verdict.resolved = resolved
        try:
            st_dev = os.stat(resolved).st_dev
        except OSError as exc:
            verdict.evidence.append(
                Evidence(Status.UNKNOWN, "path", f"cannot stat {resolved}: {exc.strerror}")
            )
            return verdict
        mount = mount_for(resolved, self.mounts(), st_dev)
        if mount is None:
            verdict.evidence.append(
                Evidence(Status.UNKNOWN, "mount", f"no mount in {self.mountinfo} holds {resolved}")
            )
            return verdict
        verdict.mount_point, verdict.fstype, verdict.source = (
            mount.mount_point,
            mount.fstype,
            mount.source,
        )
        if mount.is_bind:
            verdict.source = f"{mount.source} (bind of {mount.root})"
        verdict.evidence.extend(self._filesystem_evidence(Path(resolved), mount, verdict, depth))
        if self.kubernetes is not None:
            k8s = self.kubernetes.evidence(str(path))
            if k8s is not None:
                verdict.evidence.append(k8s)
        return verdict

    def _filesystem_evidence(
        self, path: Path, mount: Mount, verdict: PathVerdict, depth: int
    ) -> list[Evidence]:
        found: list[Evidence] = []
        fuse = fuse_crypto_evidence(mount)
        if fuse is not None:
            return [fuse]
        policy = fscrypt_evidence(path, mount.mount_point)
        if policy is not None:
            found.append(policy)
        if mount.fstype == "zfs":
            evidence, vdevs = zfs_evidence(mount, self.run)
            found.append(evidence)
            if vdevs:
                devices = [self._device_at(Path(v)) for v in vdevs]
                found.append(self._combine("zfs pool", mount.source, devices, verdict, depth))
            return found
        if mount.fstype in MEMORY_FS:
            found.append(
                Evidence(
                    Status.UNENCRYPTED,
                    mount.fstype,
                    f"{mount.mount_point} is {mount.fstype}: held in memory and "
                    "swapped to disk unencrypted under memory pressure",
                )
            )
            return found
        if mount.fstype in NETWORK_FS:
            found.append(
                Evidence(
                    Status.UNKNOWN,
                    mount.fstype,
                    f"{mount.mount_point} is a network filesystem ({mount.source}): "
                    "its encryption at rest is not visible from this host",
                )
            )
            return found
        if mount.fstype == "overlay":
            found.append(self._overlay(mount, depth))
            return found
        if mount.fstype.startswith("fuse"):
            found.append(
                Evidence(
                    Status.UNKNOWN,
                    mount.fstype,
                    f"{mount.mount_point} is FUSE {mount.fstype}, not a known crypto filesystem",
                )
            )
            return found
        devices = self._mount_devices(mount)
        if not devices:
            found.append(
                Evidence(
                    Status.UNKNOWN,
                    "block device",
                    f"{mount.mount_point} ({mount.fstype}, {mount.source}) has no "
                    "block device this host can see",
                )
            )
            return found
        found.append(self._combine(mount.fstype, mount.mount_point, devices, verdict, depth))
        return found

    def _overlay(self, mount: Mount, depth: int) -> Evidence:
        upper = mount.super_option("upperdir")
        if upper and Path(upper).exists() and depth < MAX_NESTING:
            sub = self.inspect(Target("overlay-upper", upper), depth + 1)
            return self._nested("overlay", f"its upper directory {upper}", sub)
        return Evidence(
            Status.UNKNOWN,
            "overlay",
            f"{mount.mount_point} is an overlay (a container's own filesystem) whose "
            "upper directory is not visible here: put database files on a volume",
        )

    def _nested(self, layer: str, what: str, sub: PathVerdict) -> Evidence:
        enc = sub.encrypted_by()
        return Evidence(
            sub.status,
            layer,
            f"{what} -> {sub.summary()}",
            ", ".join(dict.fromkeys(e.cipher for e in enc if e.cipher)),
            "; ".join(dict.fromkeys(e.key_location for e in enc if e.key_location)),
        )

    # -- block devices -----------------------------------------------------

    def _device_at(self, node: Path) -> BlockDevice | None:
        try:
            rdev = os.stat(node).st_rdev
        except OSError:
            return None
        name = SysfsBlock(self.sysfs).name_for(os.major(rdev), os.minor(rdev))
        return SysfsBlock(self.sysfs).device(name) if name else None

    def _mount_devices(self, mount: Mount) -> list[BlockDevice | None]:
        sysfs = SysfsBlock(self.sysfs)
        name = sysfs.name_for(mount.major, mount.minor) if mount.major else None
        if name is None and mount.source.startswith("/dev/"):
            device = self._device_at(Path(mount.source))
            name = device.name if device else None
        if name is None:
            return []
        if mount.fstype == "btrfs":
            others = self._btrfs_devices(name)
            if len(others) > 1:
                return [sysfs.device(n) for n in others]
        return [sysfs.device(name)]

    def _btrfs_devices(self, name: str) -> list[str]:
        """Every device of a multi-device btrfs (all must be encrypted)."""
        try:
            for fs in (self.sysfs / "fs" / "btrfs").iterdir():
                devices = (
                    sorted(p.name for p in (fs / "devices").iterdir())
                    if (fs / "devices").is_dir()
                    else []
                )
                if name in devices:
                    return devices
        except OSError:
            pass
        return [name]

    def _combine(
        self,
        layer: str,
        where: str,
        devices: list[BlockDevice | None],
        verdict: PathVerdict,
        depth: int,
    ) -> Evidence:
        evidence: list[Evidence] = []
        for device in devices:
            if device is None:
                evidence.append(
                    Evidence(
                        Status.UNKNOWN,
                        "block device",
                        f"a device of {where} is not visible in sysfs",
                    )
                )
                continue
            verdict.device_stack.extend(device.flatten())
            evidence.append(self.device_evidence(device, depth))
        if len(evidence) == 1:
            return evidence[0]
        return _all_of(layer, where, evidence)

    def device_evidence(self, dev: BlockDevice, depth: int = 0) -> Evidence:
        """Encrypted when the device is dm-crypt, or every device it sits on is encrypted."""
        if dev.kind == "dm-crypt":
            return crypt_evidence(dev, self.dev, self.run)
        if dev.kind == "loop":
            if not dev.backing_file or depth >= MAX_NESTING:
                return Evidence(Status.UNKNOWN, "loop", f"{dev.name} has no backing file to check")
            backing = dev.backing_file.removesuffix(" (deleted)")
            sub = self.inspect(Target("loop-backing", backing), depth + 1)
            return self._nested("loop", f"{dev.name} stores its blocks in {backing}", sub)
        if dev.children:
            below = [self.device_evidence(c, depth) for c in dev.children]
            if len(below) == 1:
                inner = below[0]
                return Evidence(
                    inner.status,
                    inner.layer,
                    f"{dev.describe()} on {inner.detail}",
                    inner.cipher,
                    inner.key_location,
                )
            return _all_of(dev.kind, dev.describe(), below)
        if dev.kind == "disk":
            for detector in self.disk_detectors:
                if detector.applies(dev):
                    return detector.evidence(dev)
            return Evidence(
                Status.UNENCRYPTED,
                "block device",
                f"{dev.describe()} is a disk with no dm-crypt layer above it "
                "(self-encrypting drives are not detected)",
            )
        return Evidence(
            Status.UNKNOWN,
            "block device",
            f"{dev.describe()}: cannot tell what this device is built on",
        )


def _all_of(layer: str, where: str, parts: list[Evidence]) -> Evidence:
    """RAID/LVM/btrfs over several devices: encrypted only if every one of them is."""
    statuses = {e.status for e in parts}
    if statuses == {Status.ENCRYPTED}:
        status = Status.ENCRYPTED
    elif Status.UNENCRYPTED in statuses:
        status = Status.UNENCRYPTED
    else:
        status = Status.UNKNOWN
    chosen = parts if status is Status.ENCRYPTED else [e for e in parts if e.status is status]
    names = sorted({e.layer for e in parts if e.status is Status.ENCRYPTED})
    label = f"{layer} over {', '.join(names)}" if status is Status.ENCRYPTED else layer
    return Evidence(
        status,
        label,
        f"{where} spans {len(parts)} devices: " + " | ".join(e.detail for e in chosen),
        ", ".join(dict.fromkeys(e.cipher for e in parts if e.cipher)),
        "; ".join(dict.fromkeys(e.key_location for e in parts if e.key_location)),
    )
