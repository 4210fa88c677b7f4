"""Unit tests of the parsers on recorded samples: mountinfo lines from a laptop
(LVM on LUKS, eCryptfs, ZFS), a Docker container and a Kubernetes pod; sysfs
layouts (LVM on LUKS on a partition, md RAID over LUKS, a half-encrypted mirror,
plain dm-crypt, cipher_null) rebuilt as small directory trees; real LUKS1/LUKS2
headers written by cryptsetup into plain files (no device-mapper needed)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ebk.config import load_config
from ebk.errors import ConfigError
from ebk.preflight.blockdev import SysfsBlock
from ebk.preflight.dmcrypt import parse_cryptsetup_status, read_luks_header
from ebk.preflight.fscrypt import parse_policy
from ebk.preflight.fusecrypt import fuse_crypto_evidence, gocryptfs_cipher
from ebk.preflight.inspect import Inspector
from ebk.preflight.kubernetes import storage_verdict
from ebk.preflight.model import PathVerdict, Status, Target
from ebk.preflight.mountinfo import mount_for, mounts_below, parse_mountinfo
from ebk.preflight.zfs import parse_vdevs, zfs_evidence
from tests.support.needs import need

LAPTOP = """\
26 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/vg0-root rw,errors=remount-ro
27 26 259:2 / /boot rw,relatime shared:50 - ext4 /dev/nvme0n1p2 rw
28 26 253:2 / /var/lib/postgresql rw,noatime shared:51 - xfs /dev/mapper/vg0-pg rw,attr2,inode64
29 26 0:45 / /home/u/Private rw,nosuid,nodev,relatime shared:60 - ecryptfs /home/u/.Private \
rw,ecryptfs_fnek_sig=aaaa,ecryptfs_sig=bbbbbbbbbbbbbbbb,ecryptfs_cipher=aes,ecryptfs_key_bytes=32
30 26 0:50 / /tank/pg rw,noatime shared:70 - zfs tank/pg rw,xattr,posixacl
31 26 8:17 / /mnt/with\\040space rw - ext4 /dev/sdb1 rw
32 28 8:33 / /var/lib/postgresql/15/main/pg_wal rw - ext4 /dev/sdc1 rw
"""
DOCKER = """\
612 548 0:120 / / rw,relatime master:260 - overlay overlay rw,lowerdir=/var/lib/docker/\
overlay2/l/AB:/var/lib/docker/overlay2/l/CD,upperdir=/var/lib/docker/overlay2/123/diff,\
workdir=/var/lib/docker/overlay2/123/work
640 612 253:2 /volumes/pgdata/_data /var/lib/postgresql/data rw,relatime - ext4 \
/dev/mapper/vg0-docker rw
641 612 0:130 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
"""
POD = """\
1100 1000 0:300 / / rw,relatime - overlay overlay rw,lowerdir=/x,upperdir=/y,workdir=/z
1200 1100 259:5 / /var/lib/postgresql/data rw,relatime - ext4 /dev/nvme1n1 rw
1201 1100 0:301 / /var/run/secrets/kubernetes.io/serviceaccount ro,relatime - tmpfs tmpfs rw
1202 1100 0:302 / /backup rw - nfs4 10.0.0.5:/exports/backup rw,vers=4.1
garbage line that is not mountinfo
"""


def test_mountinfo_laptop() -> None:
    mounts = parse_mountinfo(LAPTOP)
    assert len(mounts) == 7
    pg = mount_for("/var/lib/postgresql/15/main/base/1", mounts)
    assert pg is not None and (pg.mount_point, pg.fstype, pg.major, pg.minor) == (
        "/var/lib/postgresql",
        "xfs",
        253,
        2,
    )
    wal = mount_for("/var/lib/postgresql/15/main/pg_wal", mounts)
    assert wal is not None and wal.source == "/dev/sdc1"
    assert mount_for("/var/lib/postgresqlX", mounts).mount_point == "/"  # type: ignore[union-attr]
    spaced = mount_for("/mnt/with space/data", mounts)
    assert spaced is not None and spaced.mount_point == "/mnt/with space"
    below = mounts_below("/var/lib/postgresql/15/main", mounts)
    assert [m.mount_point for m in below] == ["/var/lib/postgresql/15/main/pg_wal"]
    ecr = mount_for("/home/u/Private/x", mounts)
    assert ecr is not None
    ev = fuse_crypto_evidence(ecr)
    assert ev is not None and ev.status is Status.ENCRYPTED and ev.layer == "eCryptfs"
    assert ev.cipher == "aes (256-bit key)" and "bbbbbbbbbbbbbbbb" in ev.key_location


def test_mountinfo_docker_bind_volume_and_overlay() -> None:
    mounts = parse_mountinfo(DOCKER)
    data = mount_for("/var/lib/postgresql/data/base", mounts)
    assert data is not None and data.is_bind and data.root == "/volumes/pgdata/_data"
    root = mount_for("/etc/passwd", mounts)
    assert root is not None and root.fstype == "overlay"
    assert root.super_option("upperdir") == "/var/lib/docker/overlay2/123/diff"
    assert root.super_option("nope") is None


def test_stacked_mounts_prefer_the_device_of_the_path() -> None:
    text = (
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "2 1 8:2 / /data rw - ext4 /dev/sda2 rw\n"
        "3 1 8:3 / /data rw - ext4 /dev/sda3 rw\n"
    )
    mounts = parse_mountinfo(text)
    assert mount_for("/data/x", mounts).source == "/dev/sda3"  # type: ignore[union-attr]
    assert mount_for("/data/x", mounts, os.makedev(8, 2)).source == "/dev/sda2"  # type: ignore[union-attr]


def test_pod_mounts_and_network_fs(tmp_path: Path) -> None:
    mounts = parse_mountinfo(POD)
    assert len(mounts) == 4
    nfs = mount_for("/backup/x", mounts)
    assert nfs is not None and nfs.fstype == "nfs4" and nfs.source == "10.0.0.5:/exports/backup"
    info = tmp_path / "mountinfo"
    info.write_text(POD)
    inspector = Inspector(mountinfo=info, sysfs=tmp_path / "sys")
    evidence = inspector._filesystem_evidence(tmp_path, nfs, _verdict(), 0)
    assert [e.status for e in evidence] == [Status.UNKNOWN]
    assert "network filesystem" in evidence[0].detail
    overlay = mount_for("/etc", mounts)
    assert overlay is not None
    (ev,) = inspector._filesystem_evidence(Path("/etc"), overlay, _verdict(), 0)
    assert ev.status is Status.UNKNOWN and "put database files on a volume" in ev.detail


def _verdict() -> PathVerdict:
    return PathVerdict(Target("extra", "/x"))


# -- sysfs layouts ------------------------------------------------------------


def _dev(
    root: Path,
    name: str,
    *,
    parent: str = "",
    dm_uuid: str = "",
    dm_name: str = "",
    slaves: tuple[str, ...] = (),
    md_level: str = "",
    model: str = "",
    vendor: str = "",
    majmin: str = "",
) -> None:
    """One block device in a recorded sysfs layout (class/block/<name> -> devices/...)."""
    real = root / "devices" / "virtual" / "block" / (f"{parent}/{name}" if parent else name)
    real.mkdir(parents=True, exist_ok=True)
    if parent:
        (real / "partition").write_text("1\n")
    if dm_uuid or dm_name:
        (real / "dm").mkdir()
        (real / "dm" / "uuid").write_text(dm_uuid + "\n")
        (real / "dm" / "name").write_text(dm_name + "\n")
    if md_level:
        (real / "md").mkdir()
        (real / "md" / "level").write_text(md_level + "\n")
    if model or vendor:
        (real / "device").mkdir()
        (real / "device" / "model").write_text(model + "\n")
        (real / "device" / "vendor").write_text(vendor + "\n")
    (real / "slaves").mkdir()
    for s in slaves:
        (real / "slaves" / s).mkdir()
    link = root / "class" / "block" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(real, link.parent))
    if majmin:
        dev = root / "dev" / "block" / majmin
        dev.parent.mkdir(parents=True, exist_ok=True)
        dev.symlink_to(os.path.relpath(real, dev.parent))


def _luks_file(path: Path, kind: str = "luks2", token: bool = False) -> None:
    need(shutil.which("cryptsetup") is not None, "cryptsetup (Debian package cryptsetup-bin)")
    with path.open("wb") as fh:
        fh.truncate(20 * 1024 * 1024)
    key = path.with_suffix(".key")
    key.write_bytes(b"k" * 32)
    subprocess.run(
        [
            "cryptsetup",
            "luksFormat",
            "-q",
            "--type",
            kind,
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            str(key),
            str(path),
        ],
        check=True,
    )
    if token:
        tok = path.with_suffix(".json")
        tok.write_text('{"type":"clevis","keyslots":["0"],"jwe":{"protected":"x"}}')
        subprocess.run(
            ["cryptsetup", "token", "import", "--json-file", str(tok), str(path)], check=True
        )


def test_lvm_on_luks2_on_partition(tmp_path: Path) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    _dev(sysfs, "nvme0n1", model="Samsung SSD 980", majmin="259:0")
    _dev(sysfs, "nvme0n1p3", parent="nvme0n1", majmin="259:3")
    _dev(
        sysfs,
        "dm-0",
        dm_uuid="CRYPT-LUKS2-0123abcd-nvme0n1p3_crypt",
        dm_name="nvme0n1p3_crypt",
        slaves=("nvme0n1p3",),
        majmin="253:0",
    )
    _dev(sysfs, "dm-1", dm_uuid="LVM-AAAABBBB", dm_name="vg0-pg", slaves=("dm-0",), majmin="253:1")
    _luks_file(dev / "nvme0n1p3", token=True)
    block = SysfsBlock(sysfs)
    assert block.name_for(253, 1) == "dm-1"
    tree = block.device("dm-1")
    assert tree.flatten() == [
        "dm-1 (LVM vg0-pg)",
        "  dm-0 (dm-crypt LUKS2, nvme0n1p3_crypt)",
        "    nvme0n1p3 (partition of nvme0n1)",
        "      nvme0n1 (Samsung SSD 980)",
    ]
    ev = Inspector(sysfs=sysfs, dev=dev).device_evidence(tree)
    assert ev.status is Status.ENCRYPTED and ev.layer == "dm-crypt/LUKS2"
    assert ev.cipher == "aes-xts-plain64" and "512-bit key" in ev.detail
    assert ev.detail.startswith("dm-1 (LVM vg0-pg) on dm-0")
    assert ev.key_location.startswith("Clevis (Tang server or TPM); 1 passphrase/key-file slot")


def test_luks1_header(tmp_path: Path) -> None:
    _luks_file(tmp_path / "l1", kind="luks1")
    header = read_luks_header(tmp_path / "l1")
    assert (header.version, header.cipher, header.key_bits, header.keyslots) == (
        1,
        "aes-xts-plain64",
        512,
        1,
    )
    with pytest.raises(ValueError):
        read_luks_header(tmp_path / "l1.key")


def test_raid1_over_two_luks_is_encrypted_but_half_plain_is_not(tmp_path: Path) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    for disk in ("sda", "sdb", "sdc"):
        _dev(sysfs, disk, vendor="ATA", model="WDC WD40")
    _dev(sysfs, "dm-0", dm_uuid="CRYPT-LUKS2-aa-a", dm_name="a", slaves=("sda",))
    _dev(sysfs, "dm-1", dm_uuid="CRYPT-LUKS2-bb-b", dm_name="b", slaves=("sdb",))
    _dev(sysfs, "md0", md_level="raid1", slaves=("dm-0", "dm-1"))
    _dev(sysfs, "md1", md_level="raid1", slaves=("dm-0", "sdc"))
    for disk in ("sda", "sdb"):
        _luks_file(dev / disk)
    inspector = Inspector(sysfs=sysfs, dev=dev)
    good = inspector.device_evidence(SysfsBlock(sysfs).device("md0"))
    assert good.status is Status.ENCRYPTED and good.layer == "md over dm-crypt/LUKS2"
    assert good.cipher == "aes-xts-plain64"
    bad = inspector.device_evidence(SysfsBlock(sysfs).device("md1"))
    assert bad.status is Status.UNENCRYPTED
    assert "sdc (ATA WDC WD40) is a disk with no dm-crypt layer" in bad.detail


def test_plain_dm_crypt_and_cipher_null_via_cryptsetup_status(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    _dev(sysfs, "sdd")
    _dev(sysfs, "dm-3", dm_uuid="CRYPT-PLAIN-secret", dm_name="secret", slaves=("sdd",))
    _dev(sysfs, "dm-4", dm_uuid="CRYPT-PLAIN-null", dm_name="null", slaves=("sdd",))
    recorded = {  # `cryptsetup status NAME` output, recorded
        "secret": "/dev/mapper/secret is active.\n  type:    PLAIN\n"
        "  cipher:  aes-cbc-essiv:sha256\n  keysize: 256 bits\n"
        "  key location: dm-crypt\n  device:  /dev/sdd\n",
        "null": "/dev/mapper/null is active.\n  type:    PLAIN\n  cipher:  cipher_null-ecb\n"
        "  keysize: 0 bits\n",
    }
    inspector = Inspector(sysfs=sysfs, dev=tmp_path, run=lambda argv: recorded[argv[-1]])
    plain = inspector.device_evidence(SysfsBlock(sysfs).device("dm-3"))
    assert plain.status is Status.ENCRYPTED and plain.layer == "dm-crypt (PLAIN)"
    assert plain.cipher == "aes-cbc-essiv:sha256" and "256-bit key" in plain.detail
    null = inspector.device_evidence(SysfsBlock(sysfs).device("dm-4"))
    assert null.status is Status.UNENCRYPTED and "cipher_null" in null.detail
    assert parse_cryptsetup_status(recorded["secret"])["device"] == "/dev/sdd"


def test_unknown_leaf_and_loop_without_backing(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    _dev(sysfs, "dm-9", dm_uuid="mpath-3600", dm_name="mpatha")  # multipath, no slaves seen
    (sysfs / "devices/virtual/block/loop7/loop").mkdir(parents=True)
    (sysfs / "class/block/loop7").symlink_to("../../devices/virtual/block/loop7")
    inspector = Inspector(sysfs=sysfs)
    assert inspector.device_evidence(SysfsBlock(sysfs).device("dm-9")).status is Status.UNKNOWN
    loop = SysfsBlock(sysfs).device("loop7")
    assert loop.kind == "loop"
    assert inspector.device_evidence(loop).status is Status.UNKNOWN


# -- fscrypt / gocryptfs / zfs / kubernetes parameters ---------------------------


def test_fscrypt_policy_structs() -> None:
    v2 = parse_policy(struct.pack("=BBBB4x16s", 2, 1, 4, 0x02, bytes(range(16))))
    assert (v2.version, v2.contents, v2.filenames) == (2, "AES-256-XTS", "AES-256-CTS")
    assert v2.flag_names == ["PAD_16"]
    v1 = parse_policy(struct.pack("=BBBB8s", 0, 9, 9, 0x04, b"descript"))
    assert (v1.version, v1.contents, v1.flag_names) == (1, "Adiantum", ["DIRECT_KEY", "PAD_4"])
    with pytest.raises(ValueError):
        parse_policy(bytes(24).replace(b"\0", b"\x07", 1))


def test_gocryptfs_feature_flags() -> None:
    assert gocryptfs_cipher({"FeatureFlags": ["GCMIV128", "EMENames"]}) == (
        "contents AES-256-GCM, filenames EME wide-block"
    )
    assert gocryptfs_cipher({"FeatureFlags": ["AESSIV", "PlaintextNames"]}) == (
        "contents AES-256-SIV, filenames plaintext"
    )
    assert gocryptfs_cipher({"FeatureFlags": ["XChaCha20Poly1305"]}).startswith(
        "contents XChaCha20-Poly1305"
    )


def test_zfs_properties_from_recorded_output() -> None:
    """Recorded `zfs get`/`zpool list` output (no ZFS module in this kernel)."""
    (mount,) = parse_mountinfo("30 26 0:50 / /tank/pg rw - zfs tank/pg rw,xattr\n")
    encrypted = (
        "encryption\taes-256-gcm\nkeylocation\tfile:///etc/zfs/pg.key\n"
        "keyformat\traw\nkeystatus\tavailable\nencryptionroot\ttank\n"
    )
    ev, vdevs = zfs_evidence(mount, lambda argv: encrypted)
    assert ev.status is Status.ENCRYPTED and ev.cipher == "aes-256-gcm" and vdevs == []
    assert ev.key_location == (
        "keyformat raw at file:///etc/zfs/pg.key (inherited from tank), key available"
    )
    plain_get = "encryption\toff\nkeylocation\tnone\nkeyformat\tnone\n"
    zpool = (
        "tank\t1.8T\t1T\t-\n\tmirror-0\t1.8T\n\t/dev/mapper/luks-a\t-\n\t/dev/mapper/luks-b\t-\n"
    )
    ev, vdevs = zfs_evidence(mount, lambda argv: plain_get if argv[0] == "zfs" else zpool)
    assert ev.status is Status.UNENCRYPTED
    assert vdevs == ["/dev/mapper/luks-a", "/dev/mapper/luks-b"] == parse_vdevs(zpool)

    def broken(argv: list[str]) -> str:
        raise OSError("zfs: command not found")

    assert zfs_evidence(mount, broken)[0].status is Status.UNKNOWN


@pytest.mark.parametrize(
    ("provisioner", "params", "status", "key"),
    [
        (
            "ebs.csi.aws.com",
            {"encrypted": "true", "kmsKeyId": "arn:aws:kms:k"},
            "encrypted",
            "AWS KMS key arn:aws:kms:k",
        ),
        ("ebs.csi.aws.com", {"type": "gp3"}, "unknown", ""),
        ("kubernetes.io/aws-ebs", {"encrypted": "true"}, "encrypted", "aws/ebs"),
        (
            "pd.csi.storage.gke.io",
            {"disk-encryption-kms-key": "projects/p/keys/k"},
            "encrypted",
            "Cloud KMS key projects/p/keys/k (CMEK)",
        ),
        ("pd.csi.storage.gke.io", {}, "encrypted", "Google-managed key"),
        (
            "disk.csi.azure.com",
            {"diskEncryptionSetID": "/sub/des"},
            "encrypted",
            "disk encryption set /sub/des",
        ),
        ("rancher.io/local-path", {}, "unknown", ""),
        (
            "rbd.csi.ceph.com",
            {"encrypted": "true", "encryptionKMSID": "vault"},
            "encrypted",
            "key vault",
        ),
    ],
)
def test_storageclass_parameters(
    provisioner: str, params: dict[str, str], status: str, key: str
) -> None:
    ev = storage_verdict(provisioner, params, "PVC x")
    assert str(ev.status) == status
    assert key in ev.key_location


def test_preflight_config_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[preflight]\npolicy = "require"\nextra_paths = ["/a"]\ncloud = false\n'
        'spool_dir = "/var/lib/ebk"\ntimeout = 2.5\n'
    )
    pf = load_config(cfg, environ={"EBK_PREFLIGHT__KUBERNETES": "false"}).preflight
    assert (pf.policy, pf.extra_paths, pf.cloud, pf.kubernetes, pf.timeout) == (
        "require",
        ["/a"],
        False,
        False,
        2.5,
    )
    cfg.write_text('[preflight]\nextra_paths = ["relative/dir"]\n')
    with pytest.raises(ConfigError, match="not absolute"):
        load_config(cfg, environ={})
    with pytest.raises(ConfigError, match="require, warn or off"):
        load_config(None, environ={"EBK_PREFLIGHT__POLICY": "maybe"})
