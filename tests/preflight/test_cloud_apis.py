"""GCE, Azure and Kubernetes detectors over HTTP, against a tiny local HTTP server that
serves recorded API objects.  It stands in for the GCE metadata server + Compute API,
Azure IMDS + Resource Manager, and the Kubernetes API server: none of them can run
here (no emulator exists for them, and no cluster can run on this machine).  The
detectors' HTTP, auth headers, JSON walking and verdicts are real; the disk identity
comes from recorded /dev/disk/by-id and /dev/disk/azure links in a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebk.preflight.blockdev import BlockDevice
from ebk.preflight.cloud_azure import AzureDetector
from ebk.preflight.cloud_gce import GceDetector
from ebk.preflight.kubernetes import KubernetesDetector
from ebk.preflight.model import Status
from tests.support.jsonapi import JsonApiServer


class StandIn(JsonApiServer):
    """Routes: path (without query) -> (status, body); records each request's headers."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, Any]] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        super().__init__(self._answer)

    def _answer(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        self.seen.append((path, headers))
        return self.routes.get(path.split("?", 1)[0], (404, {"error": "not found"}))

    def headers_for(self, prefix: str) -> list[dict[str, str]]:
        return [h for p, h in self.seen if p.startswith(prefix)]


@pytest.fixture
def api() -> Iterator[StandIn]:
    stand_in = StandIn()
    yield stand_in
    stand_in.close()


def _link(dev: Path, rel: str, target: str) -> None:
    link = dev / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"../../{target}")


# -- GCE --------------------------------------------------------------------------


def test_gce_persistent_disk_with_cmek(api: StandIn, tmp_path: Path) -> None:
    _link(tmp_path, "disk/by-id/google-pgdata", "sdb")
    _link(tmp_path, "disk/by-id/google-pgdata-part1", "sdb1")
    _link(tmp_path, "disk/by-id/google-scratch", "sdc")
    meta = "/computeMetadata/v1"
    key = "projects/p1/locations/europe-west1/keyRings/r/cryptoKeys/pg"
    api.routes.update(
        {
            f"{meta}/project/project-id": (200, "p1"),
            f"{meta}/instance/zone": (200, "projects/123/zones/europe-west1-b"),
            f"{meta}/instance/name": (200, "db-1"),
            f"{meta}/instance/service-accounts/default/token": (200, {"access_token": "tok-gce"}),
            "/compute/v1/projects/p1/zones/europe-west1-b/instances/db-1": (
                200,
                {
                    "disks": [
                        {
                            "deviceName": "pgdata",
                            "source": "https://compute.googleapis.com/compute/v1/projects/p1/zones/"
                            "europe-west1-b/disks/pgdata-disk",
                        },
                        {
                            "deviceName": "scratch",
                            "source": "https://compute.googleapis.com/compute/v1/projects/p1/zones/"
                            "europe-west1-b/disks/scratch-disk",
                        },
                    ]
                },
            ),
            "/compute/v1/projects/p1/zones/europe-west1-b/disks/pgdata-disk": (
                200,
                {"name": "pgdata-disk", "diskEncryptionKey": {"kmsKeyName": key}},
            ),
            "/compute/v1/projects/p1/zones/europe-west1-b/disks/scratch-disk": (
                200,
                {"name": "scratch-disk"},
            ),
        }
    )
    det = GceDetector(
        dev_root=tmp_path,
        metadata_url=api.url + meta,
        compute_url=api.url + "/compute/v1",
        timeout=5,
    )
    pd = BlockDevice("sdb", "disk", vendor="Google", model="PersistentDisk")
    assert det.applies(pd) and det.device_name("sdb") == "pgdata"
    ev = det.evidence(pd)
    assert ev.status is Status.ENCRYPTED and ev.key_location == f"Cloud KMS key {key} (CMEK)"
    assert "pgdata-disk" in ev.detail
    plain_key = det.evidence(BlockDevice("sdc", "disk", vendor="Google", model="PersistentDisk"))
    assert plain_key.status is Status.ENCRYPTED and plain_key.key_location == "Google-managed key"
    assert all(h.get("Metadata-Flavor") == "Google" for h in api.headers_for(meta))
    assert all(h.get("Authorization") == "Bearer tok-gce" for h in api.headers_for("/compute/v1"))
    unlinked = det.evidence(BlockDevice("sdd", "disk", vendor="Google", model="PersistentDisk"))
    assert unlinked.status is Status.UNKNOWN and "google-* link" in unlinked.detail


def test_gce_api_refusal_is_unknown(api: StandIn, tmp_path: Path) -> None:
    _link(tmp_path, "disk/by-id/google-pgdata", "sdb")
    meta = "/computeMetadata/v1"
    api.routes.update(
        {
            f"{meta}/project/project-id": (200, "p1"),
            f"{meta}/instance/zone": (200, "projects/1/zones/z"),
            f"{meta}/instance/name": (200, "db-1"),
            f"{meta}/instance/service-accounts/default/token": (
                200,
                {"access_token": "tok-secret"},
            ),
            "/compute/v1/projects/p1/zones/z/instances/db-1": (403, {"error": "denied"}),
        }
    )
    det = GceDetector(
        dev_root=tmp_path, metadata_url=api.url + meta, compute_url=api.url + "/compute/v1"
    )
    ev = det.evidence(BlockDevice("sdb", "disk", vendor="Google", model="PersistentDisk"))
    assert ev.status is Status.UNKNOWN
    assert "HTTP 403" in ev.detail and "compute.instances.get" in ev.detail
    assert "tok-secret" not in ev.detail


# -- Azure ------------------------------------------------------------------------


def test_azure_managed_disks(api: StandIn, tmp_path: Path) -> None:
    _link(tmp_path, "disk/azure/root", "sda")
    _link(tmp_path, "disk/azure/resource", "sdb")
    (tmp_path / "disk/azure/scsi1").mkdir(parents=True)
    (tmp_path / "disk/azure/scsi1/lun0").symlink_to("../../../sdc")
    (tmp_path / "disk/azure/scsi1/lun1").symlink_to("../../../sdd")
    sub = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks"
    api.routes.update(
        {
            "/metadata/instance/compute": (
                200,
                {
                    "securityProfile": {"encryptionAtHost": "false"},
                    "storageProfile": {
                        "osDisk": {"managedDisk": {"id": f"{sub}/os"}},
                        "dataDisks": [
                            {"lun": "0", "managedDisk": {"id": f"{sub}/pgdata"}},
                            {"lun": "1", "managedDisk": {"id": f"{sub}/odd"}},
                        ],
                    },
                },
            ),
            "/metadata/identity/oauth2/token": (200, {"access_token": "tok-az"}),
            f"{sub}/os": (
                200,
                {
                    "name": "os",
                    "properties": {"encryption": {"type": "EncryptionAtRestWithPlatformKey"}},
                },
            ),
            f"{sub}/pgdata": (
                200,
                {
                    "name": "pgdata",
                    "properties": {
                        "encryption": {
                            "type": "EncryptionAtRestWithCustomerKey",
                            "diskEncryptionSetId": "/subscriptions/s/des/pg-des",
                        }
                    },
                },
            ),
            f"{sub}/odd": (200, {"name": "odd", "properties": {}}),
        }
    )
    det = AzureDetector(dev_root=tmp_path, imds_url=api.url, arm_url=api.url, timeout=5)
    disk = {
        n: BlockDevice(n, "disk", vendor="Msft", model="Virtual Disk")
        for n in ("sda", "sdb", "sdc", "sdd", "sde")
    }
    assert det.applies(disk["sdc"]) and det.role("sdc") == "lun0"
    data = det.evidence(disk["sdc"])
    assert data.status is Status.ENCRYPTED
    assert data.key_location == (
        "customer-managed key via disk encryption set /subscriptions/s/des/pg-des"
    )
    os_disk = det.evidence(disk["sda"])
    assert os_disk.status is Status.ENCRYPTED
    assert os_disk.key_location == "platform-managed key (Microsoft)"
    assert det.evidence(disk["sdb"]).status is Status.UNENCRYPTED  # temp disk, no enc at host
    assert det.evidence(disk["sdd"]).status is Status.UNKNOWN  # no encryption type reported
    assert det.evidence(disk["sde"]).status is Status.UNKNOWN  # no /dev/disk/azure link
    assert all(h.get("Metadata") == "true" for h in api.headers_for("/metadata"))
    assert all(h.get("Authorization") == "Bearer tok-az" for h in api.headers_for(sub))


# -- Kubernetes ---------------------------------------------------------------------


def _k8s(api: StandIn, tmp_path: Path, sc: dict[str, Any] | None) -> KubernetesDetector:
    ns = "db"
    token = tmp_path / "token"
    token.write_text("sa-token-123\n")
    api.routes.update(
        {
            f"/api/v1/namespaces/{ns}/pods/pg-0": (
                200,
                {
                    "spec": {
                        "containers": [
                            {
                                "name": "pg",
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                    {"name": "scratch", "mountPath": "/scratch"},
                                    {"name": "eph", "mountPath": "/wal"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "data", "persistentVolumeClaim": {"claimName": "pgdata-pg-0"}},
                            {"name": "scratch", "emptyDir": {}},
                            {"name": "eph", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                        ],
                    }
                },
            ),
            f"/api/v1/namespaces/{ns}/persistentvolumeclaims/pgdata-pg-0": (
                200,
                {"spec": {"volumeName": "pvc-123", "storageClassName": "fast"}},
            ),
            f"/api/v1/namespaces/{ns}/persistentvolumeclaims/pg-0-eph": (
                200,
                {"spec": {"volumeName": "pvc-456"}},
            ),
            "/api/v1/persistentvolumes/pvc-123": (
                200,
                {
                    "spec": {
                        "storageClassName": "fast",
                        "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-0abc"},
                    }
                },
            ),
            "/api/v1/persistentvolumes/pvc-456": (
                200,
                {"spec": {"gcePersistentDisk": {"pdName": "eph-disk"}}},
            ),
        }
    )
    if sc is not None:
        api.routes["/apis/storage.k8s.io/v1/storageclasses/fast"] = (200, sc)
    return KubernetesDetector(api_url=api.url, token_path=token, namespace=ns, pod_name="pg-0")


def test_kubernetes_pvc_pv_storageclass_chain(api: StandIn, tmp_path: Path) -> None:
    det = _k8s(
        api,
        tmp_path,
        {
            "provisioner": "ebs.csi.aws.com",
            "parameters": {
                "type": "gp3",
                "encrypted": "true",
                "kmsKeyId": "arn:aws:kms:eu-west-1:1:key/k",
            },
        },
    )
    ev = det.evidence("/var/lib/postgresql/data/pgdata/base")
    assert ev is not None and ev.status is Status.ENCRYPTED
    assert ev.detail.startswith("PVC pgdata-pg-0 -> PV pvc-123 -> StorageClass fast")
    assert ev.key_location == "AWS KMS key arn:aws:kms:eu-west-1:1:key/k"
    wal = det.evidence("/wal")  # generic ephemeral volume: PVC <pod>-<volume>, in-tree GCE PV
    assert wal is not None and wal.status is Status.ENCRYPTED and wal.layer == "kubernetes gce-pd"
    scratch = det.evidence("/scratch/x")
    assert scratch is not None and scratch.status is Status.UNKNOWN
    assert "emptyDir" in scratch.detail
    assert det.evidence("/etc/postgresql") is None  # not on any pod volume
    assert all(h.get("Authorization") == "Bearer sa-token-123" for _, h in api.seen)


def test_kubernetes_unencrypted_storageclass_and_missing_rbac(api: StandIn, tmp_path: Path) -> None:
    det = _k8s(api, tmp_path, {"provisioner": "ebs.csi.aws.com", "parameters": {"type": "gp3"}})
    ev = det.evidence("/var/lib/postgresql/data")
    assert ev is not None and ev.status is Status.UNKNOWN
    assert 'does not set encrypted: "true"' in ev.detail
    del api.routes["/apis/storage.k8s.io/v1/storageclasses/fast"]  # as if RBAC forbade it
    ev = det.evidence("/var/lib/postgresql/data")
    assert ev is not None and ev.status is Status.UNKNOWN
    assert "HTTP 404" in ev.detail and "storageclasses" in ev.detail
    assert "sa-token-123" not in ev.detail


def test_in_cluster_needs_service_account() -> None:
    """Outside a pod (no KUBERNETES_SERVICE_HOST) the detector is not even built."""
    assert KubernetesDetector.in_cluster({}) is None
