"""Kubernetes: the pod's volume mount -> PVC -> PV -> StorageClass, by REST.

Inside a pod the block device of a PVC is often invisible or anonymous, but
the API knows what provisioned it.  The service-account token and CA are the
pod's own; the pod needs RBAC `get` on its pod and its PVCs, on
persistentvolumes and on storageclasses.  Endpoints are parameters so tests
can serve the API objects from a local HTTP server.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ebk.preflight.http import ApiError, dig, request_json
from ebk.preflight.model import Evidence, Status

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
AWS = ("ebs.csi.aws.com", "kubernetes.io/aws-ebs")
GCE = ("pd.csi.storage.gke.io", "kubernetes.io/gce-pd")
AZURE = ("disk.csi.azure.com", "kubernetes.io/azure-disk")


def _contains(mount_path: str, path: str) -> bool:
    mount_path = mount_path.rstrip("/") or "/"
    return path == mount_path or path.startswith(mount_path.rstrip("/") + "/")


def storage_verdict(provisioner: str, params: Mapping[str, str], where: str) -> Evidence:
    """The encryption a provisioner + parameters give a volume (keys are case-insensitive)."""
    p = {k.lower(): str(v) for k, v in params.items()}
    if provisioner in AWS:
        if p.get("encrypted", "").lower() == "true":
            key = p.get("kmskeyid") or "the AWS-managed key aws/ebs"
            return Evidence(
                Status.ENCRYPTED,
                "kubernetes ebs",
                f"{where}: encrypted=true",
                "AES-256-XTS (EBS)",
                f"AWS KMS key {key}",
            )
        return Evidence(
            Status.UNKNOWN,
            "kubernetes ebs",
            f'{where} does not set encrypted: "true"; the EBS volume is encrypted only if '
            "the account's EBS encryption by default is on",
        )
    if provisioner in GCE:
        key = p.get("disk-encryption-kms-key", "")
        return Evidence(
            Status.ENCRYPTED,
            "kubernetes gce-pd",
            f"{where}: GCE persistent disk",
            "AES-256",
            f"Cloud KMS key {key} (CMEK)" if key else "Google-managed key",
        )
    if provisioner in AZURE:
        des = p.get("diskencryptionsetid")
        kind = p.get("diskencryptiontype", "")
        where_key = (
            f"customer-managed key via disk encryption set {des}"
            if des
            else "platform-managed key (Microsoft)"
        )
        return Evidence(
            Status.ENCRYPTED,
            "kubernetes azure-disk",
            f"{where}: Azure managed disk{' (' + kind + ')' if kind else ''}",
            "AES-256",
            where_key,
        )
    if p.get("encrypted", "").lower() == "true":
        key = p.get("kmskeyid") or p.get("encryptionkmsid") or "named by the provisioner"
        return Evidence(
            Status.ENCRYPTED, "kubernetes", f"{where}: encrypted=true", key_location=f"key {key}"
        )
    return Evidence(
        Status.UNKNOWN,
        "kubernetes",
        f"{where}: provisioner {provisioner or '(none)'} sets no encryption parameter",
    )


class KubernetesDetector:
    """Finds the PVC behind a path in this pod and what its StorageClass promises."""

    def __init__(
        self,
        *,
        api_url: str,
        token_path: Path,
        namespace: str,
        pod_name: str,
        ca_path: Path | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.token_path = token_path
        self.namespace = namespace
        self.pod_name = pod_name
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if ca_path is not None and self.api_url.startswith("https:"):
            self.context = ssl.create_default_context(cafile=str(ca_path))

    @classmethod
    def in_cluster(
        cls, environ: Mapping[str, str], timeout: float = 5.0
    ) -> KubernetesDetector | None:
        host = environ.get("KUBERNETES_SERVICE_HOST")
        token = SA_DIR / "token"
        if not host or not token.exists():
            return None
        port = environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        try:
            namespace = (SA_DIR / "namespace").read_text().strip()
        except OSError:
            namespace = environ.get("POD_NAMESPACE", "default")
        pod = environ.get("POD_NAME") or environ.get("HOSTNAME") or socket.gethostname()
        return cls(
            api_url=f"https://{host}:{port}",
            token_path=token,
            namespace=namespace,
            pod_name=pod,
            ca_path=SA_DIR / "ca.crt",
            timeout=timeout,
        )

    def _get(self, path: str) -> Any:
        token = self.token_path.read_text().strip()
        return request_json(
            f"{self.api_url}{path}",
            timeout=self.timeout,
            context=self.context,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )

    def _claim_for(self, path: str) -> tuple[str, str] | None:
        """(volume name, PVC name) of the pod volume mounted over ``path``; None if none."""
        pod = self._get(f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}")
        best: tuple[str, str] | None = None
        for container in dig(pod, "spec", "containers") or []:
            for vm in container.get("volumeMounts") or []:
                mount_path = str(vm.get("mountPath", ""))
                if _contains(mount_path, path) and (best is None or len(mount_path) > len(best[0])):
                    best = (mount_path, str(vm.get("name")))
        if best is None:
            return None
        for volume in dig(pod, "spec", "volumes") or []:
            if volume.get("name") != best[1]:
                continue
            claim = dig(volume, "persistentVolumeClaim", "claimName")
            if claim:
                return best[1], str(claim)
            if dig(volume, "ephemeral", "volumeClaimTemplate"):
                return best[1], f"{self.pod_name}-{best[1]}"
            kinds = [k for k in volume if k != "name"]
            return best[1], f"!{','.join(kinds) or 'unknown'}"
        return None

    def evidence(self, path: str) -> Evidence | None:
        """Evidence for the PVC behind ``path``; None when no pod volume holds it."""
        try:
            found = self._claim_for(os.path.normpath(path))
            if found is None:
                return None
            volume, claim = found
            if claim.startswith("!"):
                return Evidence(
                    Status.UNKNOWN,
                    "kubernetes",
                    f"pod volume {volume} is {claim[1:]}, not a PVC: it lives on "
                    "the node's own disk",
                )
            pvc = self._get(f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims/{claim}")
            pv_name = dig(pvc, "spec", "volumeName")
            if not pv_name:
                raise ApiError(f"PVC {claim} is not bound to a PersistentVolume")
            pv = self._get(f"/api/v1/persistentvolumes/{pv_name}")
            sc_name = dig(pv, "spec", "storageClassName") or dig(pvc, "spec", "storageClassName")
            params: dict[str, str] = dict(dig(pv, "spec", "csi", "volumeAttributes") or {})
            provisioner = str(dig(pv, "spec", "csi", "driver") or "")
            if dig(pv, "spec", "awsElasticBlockStore"):
                provisioner = AWS[1]
            elif dig(pv, "spec", "gcePersistentDisk"):
                provisioner = GCE[1]
            elif dig(pv, "spec", "azureDisk"):
                provisioner = AZURE[1]
            if sc_name:
                sc = self._get(f"/apis/storage.k8s.io/v1/storageclasses/{sc_name}")
                provisioner = str(sc.get("provisioner") or provisioner)
                params.update({str(k): str(v) for k, v in (sc.get("parameters") or {}).items()})
        except (ApiError, OSError) as exc:
            return Evidence(
                Status.UNKNOWN,
                "kubernetes",
                f"cannot follow PVC -> PV -> StorageClass for {path}: {exc} (the "
                "service account needs get on pods, persistentvolumeclaims, "
                "persistentvolumes and storageclasses)",
            )
        where = f"PVC {claim} -> PV {pv_name} -> StorageClass {sc_name or '(none)'}"
        return storage_verdict(provisioner, params, where)
