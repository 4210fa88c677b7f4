"""AWS EBS detection against moto's EC2 server (a real HTTP EC2 API on 127.0.0.1):
one encrypted volume with a KMS key, one unencrypted, one that EC2 does not know.

The NVMe side is a recorded sysfs tree (block/nvmeXn1/device/serial and model):
that is the one place a fake sysfs stands in, because no EBS NVMe device can exist
on this machine.  Everything after the serial (volume id -> DescribeVolumes) is real."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from ebk.preflight.blockdev import BlockDevice
from ebk.preflight.cloud_aws import EbsDetector, volume_id_from_serial
from ebk.preflight.inspect import Inspector
from ebk.preflight.model import Status
from tests.support.emulators import Server
from tests.support.net import free_port

pytestmark = pytest.mark.slow

KMS_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture
def moto_ec2(moto: Server) -> str:
    """The session's moto (tests/support/fixtures.py) as the EC2 endpoint."""
    return moto.endpoint


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _nvme(sysfs: Path, name: str, serial: str, model: str) -> BlockDevice:
    device = sysfs / "block" / name / "device"
    device.mkdir(parents=True)
    (device / "serial").write_text(serial.ljust(20) + "\n")  # NVMe pads serials with spaces
    (device / "model").write_text(model.ljust(40) + "\n")
    return BlockDevice(name, "disk", model=model, serial=serial)


def test_ebs_volumes_via_describe_volumes(moto_ec2: str, aws_env: None, tmp_path: Path) -> None:
    ec2 = boto3.client("ec2", endpoint_url=moto_ec2, region_name="us-east-1")
    enc = ec2.create_volume(
        AvailabilityZone="us-east-1a", Size=8, Encrypted=True, KmsKeyId=KMS_ARN
    )["VolumeId"]
    plain = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    sysfs = tmp_path / "sys"
    ebs = "Amazon Elastic Block Store"
    disks = {
        "enc": _nvme(sysfs, "nvme1n1", enc.replace("-", ""), ebs),
        "plain": _nvme(sysfs, "nvme2n1", plain.replace("-", ""), ebs),
        "gone": _nvme(sysfs, "nvme3n1", "vol0123456789abcdef0", ebs),
        "store": _nvme(sysfs, "nvme4n1", "AWS1234567890ABCDEF", "Amazon EC2 NVMe Instance Storage"),
        "other": _nvme(sysfs, "nvme5n1", "S4EWNX0R123456", "Samsung SSD 980 PRO"),
    }
    detector = EbsDetector(sysfs_root=sysfs, endpoint_url=moto_ec2, region="us-east-1", timeout=5)
    inspector = Inspector(sysfs=sysfs, disk_detectors=[detector])
    results = {k: inspector.device_evidence(d) for k, d in disks.items()}

    assert results["enc"].status is Status.ENCRYPTED
    assert results["enc"].layer == "aws ebs"
    assert results["enc"].key_location == f"AWS KMS key {KMS_ARN}"
    assert enc in results["enc"].detail and "Encrypted=true" in results["enc"].detail

    assert results["plain"].status is Status.UNENCRYPTED
    assert f"{plain}, Encrypted=false" in results["plain"].detail

    assert results["gone"].status is Status.UNKNOWN
    assert "vol-0123456789abcdef0" in results["gone"].detail
    assert "DescribeVolumes failed" in results["gone"].detail

    assert results["store"].status is Status.ENCRYPTED
    assert results["store"].layer == "aws instance store"

    assert not detector.applies(disks["other"])
    assert results["other"].status is Status.UNENCRYPTED  # a plain local NVMe disk


def test_unreachable_ec2_is_unknown(aws_env: None, tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    disk = _nvme(sysfs, "nvme1n1", "vol0abcdef0123456789", "Amazon Elastic Block Store")
    detector = EbsDetector(
        sysfs_root=sysfs,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        timeout=1,
    )
    ev = detector.evidence(disk)
    assert ev.status is Status.UNKNOWN and "ec2:DescribeVolumes" in ev.detail


def test_serial_to_volume_id() -> None:
    assert volume_id_from_serial("vol0123456789abcdef0   ") == "vol-0123456789abcdef0"
    assert volume_id_from_serial("vol-0123abcd") == "vol-0123abcd"
    assert volume_id_from_serial("AWS1234567890") is None
