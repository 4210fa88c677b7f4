"""AWS EBS: NVMe serial -> volume id -> EC2 DescribeVolumes (Encrypted, KmsKeyId).

On Nitro instances an EBS volume is an NVMe namespace whose controller serial
is the volume id without its dash (vol0123456789abcdef0).  Instance-store
NVMe disks are always encrypted by the Nitro hardware (AES-256-XTS, a key per
instance that is destroyed when it stops).  The sysfs root and the EC2
endpoint are parameters so tests can use a recorded serial and a local EC2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ebk.preflight.blockdev import BlockDevice
from ebk.preflight.http import ApiError, request_json
from ebk.preflight.model import Evidence, Status

EBS_MODEL = "Amazon Elastic Block Store"
INSTANCE_STORE_MODEL = "Amazon EC2 NVMe Instance Storage"
IMDS = "http://169.254.169.254"
_SERIAL = re.compile(r"^vol-?([0-9a-f]{8,17})$")


def volume_id_from_serial(serial: str) -> str | None:
    match = _SERIAL.match(serial.strip())
    return f"vol-{match.group(1)}" if match else None


class EbsDetector:
    """Evidence for NVMe disks that are EBS volumes or instance store."""

    def __init__(
        self,
        *,
        sysfs_root: Path = Path("/sys"),
        endpoint_url: str = "",
        region: str = "",
        timeout: float = 5.0,
        imds_url: str = IMDS,
    ) -> None:
        self.sysfs_root = sysfs_root
        self.endpoint_url = endpoint_url
        self.region = region
        self.timeout = timeout
        self.imds_url = imds_url

    def _device_file(self, disk: str, name: str) -> str:
        try:
            return (self.sysfs_root / "block" / disk / "device" / name).read_text().strip()
        except OSError:
            return ""

    def applies(self, disk: BlockDevice) -> bool:
        model = self._device_file(disk.name, "model")
        return model in (EBS_MODEL, INSTANCE_STORE_MODEL) or (
            disk.name.startswith("nvme")
            and volume_id_from_serial(self._device_file(disk.name, "serial")) is not None
        )

    def _region(self) -> str:
        import boto3  # imported on use: most hosts have no EBS disk, and boto3 is slow to load

        if self.region:
            return self.region
        session_region = boto3.session.Session().region_name
        if session_region:
            return session_region
        token = request_json(
            f"{self.imds_url}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
            timeout=self.timeout,
            raw=True,
        )
        return str(
            request_json(
                f"{self.imds_url}/latest/meta-data/placement/region",
                headers={"X-aws-ec2-metadata-token": token},
                timeout=self.timeout,
                raw=True,
            )
        ).strip()

    def _describe(self, volume_id: str) -> dict[str, Any]:
        import boto3
        import botocore.config

        client = boto3.client(
            "ec2",
            region_name=self._region(),
            endpoint_url=self.endpoint_url or None,
            config=botocore.config.Config(
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
                retries={"max_attempts": 2},
            ),
        )
        volumes = client.describe_volumes(VolumeIds=[volume_id]).get("Volumes", [])
        if not volumes:
            raise ApiError(f"EC2 knows no volume {volume_id}")
        return dict(volumes[0])

    def evidence(self, disk: BlockDevice) -> Evidence:
        model = self._device_file(disk.name, "model")
        if model == INSTANCE_STORE_MODEL:
            return Evidence(
                Status.ENCRYPTED,
                "aws instance store",
                f"{disk.name} is NVMe instance storage, encrypted by the Nitro hardware",
                "AES-256-XTS",
                "per-instance hardware key, destroyed when the instance stops",
            )
        serial = self._device_file(disk.name, "serial")
        volume_id = volume_id_from_serial(serial)
        if volume_id is None:
            return Evidence(
                Status.UNKNOWN,
                "aws ebs",
                f"{disk.name} is an EBS disk but its NVMe serial {serial!r} is not a volume id",
            )
        import botocore.exceptions

        try:
            volume = self._describe(volume_id)
        except (
            ApiError,
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        ) as exc:
            return Evidence(
                Status.UNKNOWN,
                "aws ebs",
                f"{disk.name} is EBS volume {volume_id} but DescribeVolumes failed: {exc} "
                "(the instance role needs ec2:DescribeVolumes; set preflight.aws_region "
                "when the region cannot be found)",
            )
        if volume.get("Encrypted"):
            key = volume.get("KmsKeyId") or "the AWS-managed key aws/ebs"
            return Evidence(
                Status.ENCRYPTED,
                "aws ebs",
                f"{disk.name} is EBS volume {volume_id}, Encrypted=true",
                "AES-256-XTS (EBS)",
                f"AWS KMS key {key}",
            )
        return Evidence(
            Status.UNENCRYPTED,
            "aws ebs",
            f"{disk.name} is EBS volume {volume_id}, Encrypted=false",
        )
