"""GCE persistent disks: metadata server + Compute REST API (no SDK).

Every persistent disk is encrypted at rest by Google; the question an auditor
asks is with which key (Google-managed, Cloud KMS CMEK, or a customer-supplied
CSEK).  The device name comes from the /dev/disk/by-id/google-<name> links
that the guest environment's udev rules create; the disk resource from the
instance's Compute API entry; the token from the metadata server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ebk.preflight.blockdev import BlockDevice
from ebk.preflight.http import ApiError, dig, request_json
from ebk.preflight.model import Evidence, Status

METADATA = "http://metadata.google.internal/computeMetadata/v1"
COMPUTE = "https://compute.googleapis.com/compute/v1"


class GceDetector:
    """Evidence for disks whose SCSI/NVMe identity says Google PersistentDisk."""

    def __init__(
        self,
        *,
        dev_root: Path = Path("/dev"),
        metadata_url: str = METADATA,
        compute_url: str = COMPUTE,
        timeout: float = 5.0,
    ) -> None:
        self.dev_root = dev_root
        self.metadata_url = metadata_url.rstrip("/")
        self.compute_url = compute_url.rstrip("/")
        self.timeout = timeout

    def applies(self, disk: BlockDevice) -> bool:
        return (disk.vendor == "Google" and disk.model in ("PersistentDisk", "EphemeralDisk")) or (
            disk.model.startswith("nvme_card")
        )

    def device_name(self, disk: str) -> str | None:
        by_id = self.dev_root / "disk" / "by-id"
        try:
            links = sorted(by_id.iterdir())
        except OSError:
            return None
        for link in links:
            if not link.name.startswith("google-") or "-part" in link.name:
                continue
            try:
                if Path(os.readlink(link)).name == disk:
                    return link.name[len("google-") :]
            except OSError:
                continue
        return None

    def _meta(self, path: str, raw: bool = True) -> Any:
        return request_json(
            f"{self.metadata_url}/{path}",
            headers={"Metadata-Flavor": "Google"},
            timeout=self.timeout,
            raw=raw,
        )

    def _api(self, path: str, token: str) -> Any:
        return request_json(
            f"{self.compute_url}/{path}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=self.timeout,
        )

    def _disk_resource(self, device_name: str) -> dict[str, Any]:
        project = str(self._meta("project/project-id")).strip()
        zone = str(self._meta("instance/zone")).strip().rsplit("/", 1)[-1]
        name = str(self._meta("instance/name")).strip()
        token = dig(
            self._meta("instance/service-accounts/default/token", raw=False), "access_token"
        )
        if not isinstance(token, str):
            raise ApiError("the metadata server gave no access token")
        instance = self._api(f"projects/{project}/zones/{zone}/instances/{name}", token)
        for attached in dig(instance, "disks") or []:
            if attached.get("deviceName") != device_name:
                continue
            source = str(attached.get("source", ""))
            if "/projects/" not in source:
                return dict(attached)
            disk = self._api("projects/" + source.split("/projects/", 1)[1], token)
            merged = dict(attached)
            merged.update(disk)
            return merged
        raise ApiError(f"instance {name} has no attached disk with device name {device_name}")

    def evidence(self, disk: BlockDevice) -> Evidence:
        if disk.model == "EphemeralDisk" or disk.model == "nvme_card":
            return Evidence(
                Status.ENCRYPTED,
                "gce local ssd",
                f"{disk.name} is a GCE local SSD, encrypted at rest by Google",
                "AES-256",
                "Google-managed key",
            )
        device_name = self.device_name(disk.name)
        if device_name is None:
            return Evidence(
                Status.UNKNOWN,
                "gce pd",
                f"{disk.name} is a GCE persistent disk but no /dev/disk/by-id/google-* link "
                "names it (install the Google guest environment's udev rules)",
            )
        try:
            resource = self._disk_resource(device_name)
        except ApiError as exc:
            return Evidence(
                Status.UNKNOWN,
                "gce pd",
                f"{disk.name} is GCE persistent disk {device_name}, but the Compute API could "
                f"not confirm its encryption: {exc} (the VM's service account needs "
                "compute.instances.get and compute.disks.get)",
            )
        key = dig(resource, "diskEncryptionKey") or {}
        if key.get("kmsKeyName"):
            where = f"Cloud KMS key {key['kmsKeyName']} (CMEK)"
        elif key.get("sha256") or key.get("rsaEncryptedKey"):
            where = "customer-supplied key (CSEK), held by the customer"
        else:
            where = "Google-managed key"
        return Evidence(
            Status.ENCRYPTED,
            "gce pd",
            f"{disk.name} is GCE persistent disk {resource.get('name', device_name)}, "
            "encrypted at rest",
            "AES-256",
            where,
        )
