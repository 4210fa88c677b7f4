"""Azure managed disks: IMDS + Azure Resource Manager REST (no SDK).

Managed disks are encrypted at rest (server-side encryption) with a platform
key, a customer key through a disk encryption set, or both.  The LUN comes
from the /dev/disk/azure links the VM agent's udev rules create; the disk id
from IMDS; its encryption from ARM with the VM's managed identity.  The
temporary resource disk is encrypted only with encryption at host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ebk.preflight.blockdev import BlockDevice
from ebk.preflight.http import ApiError, dig, request_json
from ebk.preflight.model import Evidence, Status

IMDS = "http://169.254.169.254"
ARM = "https://management.azure.com"
ARM_API_VERSION = "2023-04-02"
ENCRYPTION_TYPES = {
    "EncryptionAtRestWithPlatformKey": "platform-managed key (Microsoft)",
    "EncryptionAtRestWithCustomerKey": "customer-managed key",
    "EncryptionAtRestWithPlatformAndCustomerKeys": "platform and customer-managed keys (double)",
}


class AzureDetector:
    """Evidence for Hyper-V SCSI disks (vendor Msft, model Virtual Disk)."""

    def __init__(
        self,
        *,
        dev_root: Path = Path("/dev"),
        imds_url: str = IMDS,
        arm_url: str = ARM,
        timeout: float = 5.0,
    ) -> None:
        self.dev_root = dev_root
        self.imds_url = imds_url.rstrip("/")
        self.arm_url = arm_url.rstrip("/")
        self.timeout = timeout

    def applies(self, disk: BlockDevice) -> bool:
        return disk.vendor == "Msft" and disk.model == "Virtual Disk"

    def role(self, disk: str) -> str | None:
        """'os', 'resource' or 'lun<N>' from the /dev/disk/azure links."""
        base = self.dev_root / "disk" / "azure"
        candidates = [(base / "root", "os"), (base / "resource", "resource")]
        try:
            for scsi in sorted(p for p in base.iterdir() if p.name.startswith("scsi")):
                candidates += [(lun, lun.name) for lun in sorted(scsi.iterdir())]
        except OSError:
            return None
        for link, role in candidates:
            try:
                if Path(os.readlink(link)).name == disk:
                    return role
            except OSError:
                continue
        return None

    def _imds(self, path: str) -> Any:
        return request_json(
            f"{self.imds_url}{path}", headers={"Metadata": "true"}, timeout=self.timeout
        )

    def _disk_id(self, compute: Any, role: str) -> str:
        if role == "os":
            disk_id = dig(compute, "storageProfile", "osDisk", "managedDisk", "id")
        else:
            lun = role.removeprefix("lun")
            disk_id = next(
                (
                    dig(d, "managedDisk", "id")
                    for d in dig(compute, "storageProfile", "dataDisks") or []
                    if str(d.get("lun")) == lun
                ),
                None,
            )
        if not disk_id:
            raise ApiError(f"IMDS lists no managed disk for {role}")
        return str(disk_id)

    def evidence(self, disk: BlockDevice) -> Evidence:
        role = self.role(disk.name)
        if role is None:
            return Evidence(
                Status.UNKNOWN,
                "azure disk",
                f"{disk.name} is an Azure disk but no /dev/disk/azure link names it "
                "(install the Azure VM agent's udev rules)",
            )
        try:
            compute = self._imds("/metadata/instance/compute?api-version=2021-02-01")
            at_host = str(dig(compute, "securityProfile", "encryptionAtHost")).lower() == "true"
            if role == "resource":
                if at_host:
                    return Evidence(
                        Status.ENCRYPTED,
                        "azure encryption at host",
                        f"{disk.name} is the resource disk, encrypted at host",
                        "AES-256",
                        "platform-managed key (Microsoft)",
                    )
                return Evidence(
                    Status.UNENCRYPTED,
                    "azure resource disk",
                    f"{disk.name} is the temporary resource disk and the VM does "
                    "not use encryption at host",
                )
            disk_id = self._disk_id(compute, role)
            token = dig(
                self._imds(
                    f"/metadata/identity/oauth2/token?api-version=2018-02-01&resource={ARM}/"
                ),
                "access_token",
            )
            if not isinstance(token, str):
                raise ApiError("IMDS gave no managed-identity token")
            resource = request_json(
                f"{self.arm_url}{disk_id}?api-version={ARM_API_VERSION}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=self.timeout,
            )
        except ApiError as exc:
            return Evidence(
                Status.UNKNOWN,
                "azure disk",
                f"{disk.name} is an Azure managed disk, but its encryption could not be "
                f"confirmed: {exc} (the VM's managed identity needs Reader on the disk)",
            )
        kind = str(dig(resource, "properties", "encryption", "type") or "")
        des = dig(resource, "properties", "encryption", "diskEncryptionSetId")
        if kind not in ENCRYPTION_TYPES:
            return Evidence(
                Status.UNKNOWN,
                "azure disk",
                f"{disk.name}: managed disk reports encryption type {kind!r}",
            )
        where = ENCRYPTION_TYPES[kind] + (f" via disk encryption set {des}" if des else "")
        if at_host:
            where += "; also encrypted at host"
        return Evidence(
            Status.ENCRYPTED,
            "azure managed disk",
            f"{disk.name} is managed disk {dig(resource, 'name') or disk_id} ({role}), {kind}",
            "AES-256",
            where,
        )
