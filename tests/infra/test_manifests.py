"""The deployment files in infra/ keep their security promises.

Parsed, not deployed (no cluster, Compose engine or cloud runs here): every YAML
document, the Compose file, the Kubernetes manifests and the Terraform text.  The
encryption checks use ebk's own preflight code, so the manifests and the detector
cannot drift apart: each StorageClass goes through ``storage_verdict``, and the
backup pod's PGDATA goes through ``KubernetesDetector`` against an API stand-in that
enforces the manifests' RBAC (tests/infra/rbac_api.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ebk.config import Config, load_config
from ebk.preflight.kubernetes import AWS, AZURE, GCE, KubernetesDetector, storage_verdict
from ebk.preflight.model import Status
from tests.infra.manifests import (
    CLOUD,
    CLOUDS,
    COMPOSE_DIR,
    K8S,
    ROLE_SQL,
    ROOT,
    STORAGE,
    Doc,
    Manifest,
    PodSpec,
    compose,
    k8s_objects,
    load_all,
    of_kind,
    pod_specs,
    sidecar_statefulset,
    statefulset_pod,
    tf_block,
    yaml_files,
)
from tests.infra.rbac_api import RbacApiServer, rules_for

NAMESPACE = "db"
SECRET_KEY = re.compile(r"(password|passwd|token|secret|api_?key|private_?key)$", re.I)
SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|API_?KEY|PRIVATE_?KEY)$")
# A YAML key with a value (`password: x`, `- token: x`), also inside block scalars where
# the parser does not see it as a key; booleans (automountServiceAccountToken) are fine.
YAML_SECRET_LINE = re.compile(
    r"\s*(-\s+)?[\"']?\w*(password|token)[\"']?:\s+(?!(true|false)\s*$)\S", re.I
)


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every mapping entry, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key), value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env") or []}


def _literal_env(container: Doc) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}


def _load_toml_text(text: str, tmp_path: Path, environ: dict[str, str]) -> Config:
    path = tmp_path / "ebk.toml"
    path.write_text(text)
    return load_config(path, environ=environ)


def _backup_cronjob() -> Doc:
    jobs = [
        m.doc
        for m in of_kind("CronJob")
        if m.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].get(
            "args", []
        )[:1]
        == ["backup"]
    ]
    assert len(jobs) == 1, "exactly one CronJob runs `ebk backup`"
    return jobs[0]


def _ebk_config_text() -> str:
    (cm,) = [m.doc for m in of_kind("ConfigMap") if m.name == "ebk-config"]
    return str(cm["data"]["ebk.toml"])


# -- all YAML --------------------------------------------------------------------------


def test_every_yaml_file_parses_and_is_known() -> None:
    files = yaml_files()
    names = {str(p.relative_to(ROOT)) for p in files}
    assert {
        "infra/docker/prod/docker-compose.prod.yml",
        "infra/kubernetes/postgres-deployment.yaml",
        "infra/kubernetes/ebk-cronjob.yaml",
        "infra/kubernetes/storage/aws-ebs/storageclass-aws-ebs.yaml",
        "infra/kubernetes/storage/gce-pd/storageclass-gce-pd.yaml",
        "infra/kubernetes/storage/azure-disk/storageclass-azure-disk.yaml",
    } <= names
    for m in load_all():
        assert "apiVersion" in m.doc or "services" in m.doc or "kind" in m.doc, m.where
    kinds = {m.kind for m in k8s_objects()}
    assert {
        "Namespace",
        "StorageClass",
        "StatefulSet",
        "Service",
        "CronJob",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "NetworkPolicy",
        "ConfigMap",
    } <= kinds


def test_kustomizations_list_existing_files_and_not_the_storageclasses() -> None:
    """The StorageClasses share one name (one per cloud, each in its storage overlay with
    its key) and the restore Job is for incidents: those are applied by hand."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
        assert not res.startswith("storage"), res
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk - listed == {"ebk-restore-job.yaml"}
    assert {p.name for p in STORAGE.iterdir()} == set(CLOUDS)
    for cloud in CLOUDS:
        overlay = yaml.safe_load((STORAGE / cloud / "kustomization.yaml").read_text())
        assert overlay["resources"] == [f"storageclass-{cloud}.yaml"]


# -- encryption of the volumes -----------------------------------------------------------


def test_storageclasses_are_encrypted_by_the_preflights_own_verdict() -> None:
    classes = of_kind("StorageClass")
    assert {m.doc["provisioner"] for m in classes} == {AWS[0], GCE[0], AZURE[0]}
    for m in classes:
        sc = m.doc
        ev = storage_verdict(
            sc["provisioner"], sc.get("parameters") or {}, f"StorageClass {m.name}"
        )
        assert ev.status is Status.ENCRYPTED, f"{m.where}: {ev.detail}"
        # Customer-managed keys, not the provider's default key.
        assert (
            "AWS KMS key arn:aws:kms:" in ev.key_location
            or "(CMEK)" in ev.key_location
            or "customer-managed key" in ev.key_location
        ), f"{m.where}: {ev.key_location}"
        assert sc.get("reclaimPolicy") == "Retain", m.where
    assert {m.name for m in classes} == {"ebk-pg-encrypted"}


def test_the_verdict_check_can_fail() -> None:
    """Control: the same AWS class without encrypted: "true" is not proven encrypted."""
    (aws,) = [m.doc for m in of_kind("StorageClass") if m.doc["provisioner"] == AWS[0]]
    params = {k: v for k, v in aws["parameters"].items() if k != "encrypted"}
    assert storage_verdict(aws["provisioner"], params, "x").status is not Status.ENCRYPTED


def test_every_pvc_uses_an_encrypted_storageclass_defined_here() -> None:
    objects = k8s_objects()
    classes: dict[str, list[Doc]] = {}
    for m in of_kind("StorageClass", objects):
        classes.setdefault(m.name, []).append(m.doc)
    claims: list[tuple[str, Doc]] = [
        (m.where, m.doc["spec"]) for m in of_kind("PersistentVolumeClaim", objects)
    ]
    for m in of_kind("StatefulSet", objects):
        claims += [
            (f"{m.where} volumeClaimTemplate {t['metadata']['name']}", t["spec"])
            for t in m.doc["spec"].get("volumeClaimTemplates") or []
        ]
    assert claims, "the StatefulSet keeps PGDATA on a claim"
    for where, spec in claims:
        name = spec.get("storageClassName")
        assert name in classes, f"{where}: storageClassName {name!r} is not defined in infra/"
        for sc in classes[name]:
            ev = storage_verdict(sc["provisioner"], sc.get("parameters") or {}, where)
            assert ev.status is Status.ENCRYPTED, f"{where}: {ev.detail}"


def test_pgdata_is_on_the_claim_and_pods_only_mount_claims_that_exist() -> None:
    (sts,) = [m.doc for m in of_kind("StatefulSet")]
    pod_name, spec = statefulset_pod(sts)
    (pg,) = [c for c in spec["containers"] if c["name"] == "postgres"]
    pgdata = _literal_env(pg)["PGDATA"]
    mounts = {vm["mountPath"]: vm["name"] for vm in pg["volumeMounts"]}
    (mount_path,) = [p for p in mounts if pgdata.startswith(p + "/")]
    assert mount_path != pgdata, "PGDATA is a subdirectory of the volume, not its root"
    templates = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert mounts[mount_path] in templates
    claims = {f"{t}-{pod_name}" for t in templates}
    for pod in pod_specs(k8s_objects()):
        for vol in pod.spec.get("volumes") or []:
            assert "hostPath" not in vol, f"{pod.where}: hostPath volume {vol['name']}"
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                assert claim in claims, f"{pod.where}: claim {claim} is not the StatefulSet's"


# -- secrets -----------------------------------------------------------------------------


def test_no_literal_secret_anywhere_in_the_yaml() -> None:
    for m in load_all():
        assert m.kind != "Secret", f"{m.where}: a Secret object in the repository"
        for path, key, value in _walk(m.doc):
            if (
                SECRET_KEY.search(key)
                and isinstance(value, (str, int, float))
                and not isinstance(value, bool)
            ):
                raise AssertionError(f"{m.where} {path}.{key}: a literal secret value")
            if key == "env" and isinstance(value, list):
                for e in value:
                    if SECRET_ENV.search(e["name"]):
                        assert "secretKeyRef" in (e.get("valueFrom") or {}), (
                            f"{m.where} {path}: env {e['name']} not from a Secret"
                        )
                        assert "value" not in e, f"{m.where}: env {e['name']} has a value"
    for file in yaml_files():
        for n, line in enumerate(file.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not YAML_SECRET_LINE.match(code), f"{file}:{n}: {line.strip()}"


def test_compose_environment_holds_no_secret_and_secrets_are_files() -> None:
    doc = compose()
    for name, svc in doc["services"].items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if re.search(r"PASSWORD|TOKEN|SECRET|KEY", key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (
                    f"service {name}: {key}={value!r} is a secret in the environment"
                )
    for name, secret in doc["secrets"].items():
        assert set(secret) == {"file"}, f"secret {name}: only file-based secrets"
        assert secret["file"].startswith("/etc/ebk/secrets/"), secret["file"]


# -- pods and containers ---------------------------------------------------------------


def _check_pod(pod: PodSpec) -> None:
    spec, where = pod.spec, pod.where
    psc = spec.get("securityContext") or {}
    assert psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot"
    assert (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", where
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(flag), f"{where}: {flag}"
    for c in pod.containers():
        sc = c.get("securityContext") or {}
        cw = f"{where} container {c['name']}"
        assert sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cw}: drop ALL"
        assert not sc.get("capabilities", {}).get("add"), f"{cw}: adds capabilities"
        assert not sc.get("privileged"), f"{cw}: privileged"
        assert sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem"
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, cw
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        assert isinstance(uid, int) and uid > 0, f"{cw}: runAsUser {uid!r}"
        limits = (c.get("resources") or {}).get("limits") or {}
        assert "memory" in limits and "cpu" in limits, f"{cw}: resource limits"


def test_every_pod_runs_non_root_without_capabilities_or_escalation() -> None:
    pods = list(pod_specs(k8s_objects()))
    assert len(pods) >= 3
    for pod in pods:
        _check_pod(pod)
    sts = sidecar_statefulset()
    _check_pod(
        PodSpec(
            "sidecar StatefulSet",
            "StatefulSet/postgres",
            sts["spec"]["template"]["spec"],
            sts["spec"]["template"]["metadata"],
        )
    )


def test_namespace_enforces_pod_security_restricted() -> None:
    (ns,) = of_kind("Namespace")
    assert ns.name == NAMESPACE
    assert ns.doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for m in k8s_objects():
        if m.kind not in ("Namespace", "StorageClass", "ClusterRole", "ClusterRoleBinding"):
            assert m.doc["metadata"].get("namespace") == NAMESPACE, m.where


def test_only_pods_that_run_the_preflight_get_an_api_token() -> None:
    for pod in pod_specs(k8s_objects()):
        token = pod.spec.get("automountServiceAccountToken")
        args = pod.spec["containers"][0].get("args") or []
        if args[:1] in (["backup"], ["restore"], ["verify"]):
            assert token is True and pod.spec["serviceAccountName"] == "ebk", pod.where
        else:
            assert token is False, f"{pod.where}: automountServiceAccountToken must be false"
    (sa,) = of_kind("ServiceAccount")
    assert sa.doc.get("automountServiceAccountToken") is False


# -- the backup CronJob ----------------------------------------------------------------


def test_cronjobs_forbid_concurrency_and_retry_on_failure() -> None:
    jobs = of_kind("CronJob")
    assert len(jobs) == 3
    for m in jobs:
        spec = m.doc["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", m.where
        job = spec["jobTemplate"]["spec"]
        if m.name == "ebk-verify":  # a failed verification is a finding: never retried
            assert job["backoffLimit"] == 0 and isinstance(job["activeDeadlineSeconds"], int)
            assert job["template"]["spec"]["restartPolicy"] == "Never", m.where
            continue
        assert isinstance(job["backoffLimit"], int) and 1 <= job["backoffLimit"] <= 5, m.where
        assert job["template"]["spec"]["restartPolicy"] == "OnFailure", m.where
        assert isinstance(job.get("activeDeadlineSeconds"), int), m.where
    backup = _backup_cronjob()
    pod = backup["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["backup", "--type", "physical"]
    assert "command" not in c, "the image's ENTRYPOINT is ebk"


def test_backup_pod_sees_pgdata_read_only_next_to_postgres(tmp_path: Path) -> None:
    backup = _backup_cronjob()
    pod = backup["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    cfg = _load_toml_text(_ebk_config_text(), tmp_path, _literal_env(c))
    data_dir = cfg.postgres.data_directory
    mounts = [vm for vm in c["volumeMounts"] if data_dir.startswith(vm["mountPath"] + "/")]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True, mounts
    (vol,) = [v for v in pod["volumes"] if v["name"] == mounts[0]["name"]]
    assert vol["persistentVolumeClaim"]["readOnly"] is True
    (sts,) = [m.doc for m in of_kind("StatefulSet")]
    (pg,) = sts["spec"]["template"]["spec"]["containers"]
    assert _literal_env(pg)["PGDATA"] == data_dir, "ebk checks the directory postgres uses"
    affinity = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert affinity[0]["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert affinity[0]["topologyKey"] == "kubernetes.io/hostname", "RWO: same node"
    # uid of PGDATA's owner: the image chmods PGDATA to 0700 and the preflight looks inside.
    assert (
        pod["securityContext"]["runAsUser"]
        == sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    )


# -- the ebk configuration in the ConfigMap --------------------------------------------


def test_configmap_config_loads_with_every_pods_overrides(tmp_path: Path) -> None:
    text = _ebk_config_text()
    base = _load_toml_text(text, tmp_path, {})
    assert base.preflight.policy == "require"
    assert base.preflight.kubernetes is True
    assert base.postgres.user == "ebk" and base.postgres.password_file == ""
    assert base.keys.provider == "vault" and base.vault.token_file == ""
    sidecar = sidecar_statefulset()["spec"]["template"]["spec"]
    containers = [
        c
        for p in pod_specs(k8s_objects())
        for c in p.spec["containers"]
        if c["image"].split("/")[-1].startswith("ebk")
    ]
    containers += [c for c in sidecar["containers"] if c["name"] == "ebk"]
    assert len(containers) == 5
    for c in containers:
        env = _literal_env(c)
        assert env["EBK_CONFIG"] == "/etc/ebk/ebk.toml"
        cfg = _load_toml_text(
            text, tmp_path, {k: v for k, v in env.items() if k.startswith("EBK_")}
        )
        assert cfg.preflight.policy == "require", c["name"]
        refs = {
            n: e["valueFrom"]["secretKeyRef"]
            for n, e in _env(c).items()
            if "secretKeyRef" in (e.get("valueFrom") or {})
        }
        needs = {
            "backup": {"PGPASSWORD", "VAULT_TOKEN"},
            "daemon": {"PGPASSWORD", "VAULT_TOKEN"},
            "restore": {"VAULT_TOKEN"},
            "verify": {"VAULT_TOKEN"},
            "retention": set(),
        }[c["args"][0]]
        assert set(refs) == needs, (c["args"], refs)
    (side,) = [c for c in sidecar["containers"] if c["name"] == "ebk"]
    cfg = _load_toml_text(
        text, tmp_path, {k: v for k, v in _literal_env(side).items() if k.startswith("EBK_")}
    )
    assert cfg.postgres.host == "127.0.0.1" and cfg.daemon.listen == "0.0.0.0:9187"
    assert [j.kind for j in cfg.daemon.jobs] == ["physical", "retention"]
    assert "readinessProbe" not in side, "ebk's readiness must not gate the postgres Service"


def test_initdb_configmap_carries_the_role_sql_verbatim() -> None:
    (cm,) = [m.doc for m in of_kind("ConfigMap") if m.name == "postgres-initdb"]
    assert cm["data"]["ebk-role.sql"] == ROLE_SQL.read_text()
    script = cm["data"]["10-ebk-role.sh"]
    assert "/etc/ebk-initdb/ebk-role.sql" in script
    assert "host replication ebk all scram-sha-256" in script


def _restore_job() -> Doc:
    (job,) = [m.doc for m in of_kind("Job") if m.name == "ebk-restore"]
    return job


def test_restore_job_writes_next_to_pgdata_on_the_same_volume() -> None:
    job = _restore_job()
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    assert args[:2] == ["restore", "latest"] and "--to" in args
    target = args[args.index("--to") + 1]
    (sts,) = [m.doc for m in of_kind("StatefulSet")]
    (pg,) = sts["spec"]["template"]["spec"]["containers"]
    pgdata = _literal_env(pg)["PGDATA"]
    assert target != pgdata and target.rsplit("/", 1)[0] == pgdata.rsplit("/", 1)[0]
    (mount,) = [vm for vm in c["volumeMounts"] if target.startswith(vm["mountPath"] + "/")]
    assert not mount.get("readOnly")
    (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert vol["persistentVolumeClaim"]["claimName"] == "pgdata-postgres-0"
    assert (
        pod["securityContext"]["runAsUser"]
        == sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    ), "restored files belong to PostgreSQL's uid"


# -- RBAC: exactly what the preflight's Kubernetes detector reads ----------------------


def _api_objects(pod_name: str, pod_spec: Doc, sc: Doc) -> dict[str, Any]:
    (sts,) = [m.doc for m in of_kind("StatefulSet")]
    (tpl,) = sts["spec"]["volumeClaimTemplates"]
    claim = f"{tpl['metadata']['name']}-{sts['metadata']['name']}-0"
    pv = "pvc-2f4c8c1e-5b0a-4f0e-9d7b-0c3f5e6a7b8c"
    return {
        f"/api/v1/namespaces/{NAMESPACE}/pods/{pod_name}": {"kind": "Pod", "spec": pod_spec},
        f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/{claim}": {
            "kind": "PersistentVolumeClaim",
            "spec": {**tpl["spec"], "volumeName": pv},
        },
        f"/api/v1/persistentvolumes/{pv}": {
            "kind": "PersistentVolume",
            "spec": {
                "storageClassName": tpl["spec"]["storageClassName"],
                "csi": {"driver": sc["provisioner"], "volumeHandle": "disk-1"},
            },
        },
        f"/apis/storage.k8s.io/v1/storageclasses/{sc['metadata']['name']}": sc,
    }


def _detect(
    pod_name: str, pod_spec: Doc, sc: Manifest, tmp_path: Path, path: str = ""
) -> tuple[RbacApiServer, Status, str]:
    sa = pod_spec["serviceAccountName"]
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    api = RbacApiServer(
        rules_for(k8s_objects(), NAMESPACE, sa),
        _api_objects(pod_name, pod_spec, sc.doc),
        "sa-token",
    )
    try:
        det = KubernetesDetector(
            api_url=api.url, token_path=token, namespace=NAMESPACE, pod_name=pod_name
        )
        data_dir = _load_toml_text(_ebk_config_text(), tmp_path, {}).postgres.data_directory
        ev = det.evidence(path or data_dir)
    finally:
        api.close()
    assert ev is not None, "PGDATA is on a pod volume"
    return api, ev.status, ev.detail


@pytest.mark.parametrize("sc_file", ["aws-ebs", "gce-pd", "azure-disk"])
def test_backup_pod_rbac_is_exactly_what_the_detector_needs(sc_file: str, tmp_path: Path) -> None:
    (sc,) = [m for m in of_kind("StorageClass") if m.path.name == f"storageclass-{sc_file}.yaml"]
    pod = _backup_cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    api, status, detail = _detect("ebk-physical-backup-29000000-x7k2q", pod, sc, tmp_path)
    assert not api.denied, f"RBAC denied the detector: {api.denied}"
    assert status is Status.ENCRYPTED, detail
    assert len(api.served) == 4, api.served  # pod, PVC, PV, StorageClass
    rules = rules_for(k8s_objects(), NAMESPACE, "ebk")
    unused = {r.origin for r in rules} - api.used
    assert not unused, f"RBAC grants more than the detector reads: {unused}"
    for r in rules:
        assert r.verbs == ("get",), f"{r.origin}: verbs {r.verbs}"


def test_restore_pod_proves_its_target_encrypted_with_the_same_rbac(tmp_path: Path) -> None:
    (sc,) = [m for m in of_kind("StorageClass") if m.doc["provisioner"] == AZURE[0]]
    pod = _restore_job()["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    api, status, detail = _detect(
        "ebk-restore-q8x2z", pod, sc, tmp_path, path=args[args.index("--to") + 1]
    )
    assert not api.denied and status is Status.ENCRYPTED, (api.denied, detail)


def test_sidecar_pod_passes_the_same_detector(tmp_path: Path) -> None:
    (sc,) = [m for m in of_kind("StorageClass") if m.doc["provisioner"] == AWS[0]]
    pod_name, spec = statefulset_pod(sidecar_statefulset())
    api, status, detail = _detect(pod_name, spec, sc, tmp_path)
    assert not api.denied and status is Status.ENCRYPTED, (api.denied, detail)


def test_the_stand_in_enforces_rbac(tmp_path: Path) -> None:
    """Control: without the StorageClass rule the detector cannot prove anything."""
    rules = [
        r for r in rules_for(k8s_objects(), NAMESPACE, "ebk") if "storageclasses" not in r.resources
    ]
    (sc,) = [m for m in of_kind("StorageClass") if m.doc["provisioner"] == GCE[0]]
    pod = _backup_cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    api = RbacApiServer(rules, _api_objects("p", pod, sc.doc), "t")
    try:
        token = tmp_path / "t"
        token.write_text("t")
        ev = KubernetesDetector(
            api_url=api.url, token_path=token, namespace=NAMESPACE, pod_name="p"
        ).evidence("/var/lib/postgresql/data/pgdata")
    finally:
        api.close()
    assert ev is not None and ev.status is Status.UNKNOWN
    assert api.denied == [f"/apis/storage.k8s.io/v1/storageclasses/{sc.name}"]


def test_network_policies_isolate_postgres_and_ebk() -> None:
    policies = {m.name: m.doc["spec"] for m in of_kind("NetworkPolicy")}
    pg = policies["postgres"]
    assert pg["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "postgres"}
    ports = {p["port"] for rule in pg["ingress"] for p in rule["ports"]}
    assert ports == {5432, 9187}
    ebk = policies["ebk"]
    assert set(ebk["policyTypes"]) == {"Ingress", "Egress"} and ebk["ingress"] == []
    egress_ports = {p["port"] for rule in ebk["egress"] for p in rule["ports"]}
    assert 5432 in egress_ports and 53 in egress_ports


# -- Docker Compose ------------------------------------------------------------------


def _bind(svc: Doc, target: str) -> Doc:
    (vol,) = [v for v in svc["volumes"] if isinstance(v, dict) and v["target"] == target]
    return vol


def test_compose_services_are_hardened() -> None:
    doc = compose()
    assert set(doc["services"]) == {"postgres", "ebk"}
    for name, svc in doc["services"].items():
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc["restart"] in ("unless-stopped", "always", "on-failure"), name
        limits = svc["deploy"]["resources"]["limits"]
        assert limits["memory"] and limits["cpus"] and limits["pids"], name
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert svc["user"] not in ("0", "root") and not svc["user"].startswith("0:"), name
        assert not svc.get("privileged"), name
    pg = doc["services"]["postgres"]
    assert pg["image"].split("@")[0] == "postgres:15"
    assert pg["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"


def test_compose_pgdata_is_the_encrypted_host_directory_and_never_created() -> None:
    doc = compose({"PGDATA_HOST_DIR": "/mnt/luks"})
    pg, ebk = doc["services"]["postgres"], doc["services"]["ebk"]
    data = _bind(pg, pg["environment"]["PGDATA"])
    assert data["type"] == "bind" and data["source"] == "/mnt/luks/data"
    assert data["bind"]["create_host_path"] is False
    seen = _bind(ebk, pg["environment"]["PGDATA"])
    assert seen["source"] == data["source"] and seen["read_only"] is True
    assert seen["bind"]["create_host_path"] is False
    assert ebk["user"] == pg["user"], "PGDATA is 0700: ebk runs as its owner to inspect it"


def test_compose_ebk_requires_the_preflight_and_its_config_loads(tmp_path: Path) -> None:
    doc = compose()
    ebk = doc["services"]["ebk"]
    env = {k: str(v) for k, v in ebk["environment"].items()}
    assert env["EBK_PREFLIGHT__POLICY"] == "require"
    assert ebk["network_mode"] == "service:postgres"
    assert (COMPOSE_DIR / ebk["build"]["context"] / "pyproject.toml").is_file()
    assert ebk["image"] == "ebk:latest"
    conf = _bind(ebk, env["EBK_CONFIG"])
    assert conf["read_only"] is True
    cfg = load_config(
        COMPOSE_DIR / conf["source"], environ={k: v for k, v in env.items() if k.startswith("EBK_")}
    )
    assert cfg.preflight.policy == "require"
    assert cfg.postgres.data_directory == doc["services"]["postgres"]["environment"]["PGDATA"]
    secrets = {s["source"]: s["target"] for s in ebk["secrets"]}
    assert cfg.keys.keyfile == secrets["ebk_kek"]
    assert cfg.postgres.password_file == secrets["ebk_db_password"]
    assert cfg.postgres.host == "127.0.0.1" and cfg.postgres.user == "ebk"
    assert cfg.daemon.listen == "0.0.0.0:9187"
    assert "127.0.0.1:9187:9187" in doc["services"]["postgres"]["ports"]
    assert cfg.repository.url == "file:///var/lib/ebk/repository"
    state = _bind(ebk, "/var/lib/ebk")
    assert cfg.daemon.state_dir.startswith(state["target"] + "/")


# -- Terraform -------------------------------------------------------------------------


def test_terraform_disks_are_encrypted_with_customer_keys() -> None:
    aws = (CLOUD / "aws-ebs.tf").read_text()
    vol = tf_block(aws, 'resource "aws_ebs_volume"')
    assert re.search(r"^\s*encrypted\s*=\s*true\s*$", vol, re.M)
    assert re.search(r"^\s*kms_key_id\s*=\s*aws_kms_key\.\w+\.arn\s*$", vol, re.M)
    by_default = tf_block(aws, 'resource "aws_ebs_encryption_by_default"')
    assert re.search(r"^\s*enabled\s*=\s*true", by_default, re.M)
    assert re.search(r"enable_key_rotation\s*=\s*true", tf_block(aws, 'resource "aws_kms_key"'))

    gcp = (CLOUD / "gcp-pd.tf").read_text()
    disk = tf_block(gcp, 'resource "google_compute_disk"')
    key = tf_block(disk, "disk_encryption_key")
    assert re.search(r"^\s*kms_key_self_link\s*=\s*google_kms_crypto_key\.\w+\.id\s*$", key, re.M)

    az = (CLOUD / "azure-disk.tf").read_text()
    mdisk = tf_block(az, 'resource "azurerm_managed_disk"')
    assert re.search(
        r"^\s*disk_encryption_set_id\s*=\s*azurerm_disk_encryption_set\.\w+\.id", mdisk, re.M
    )
    des = tf_block(az, 'resource "azurerm_disk_encryption_set"')
    assert re.search(r'encryption_type\s*=\s*"EncryptionAtRestWithCustomerKey"', des)

    for path in CLOUD.glob("*.tf"):
        text = path.read_text()
        assert not re.search(r'(password|secret|token)\w*\s*=\s*"', text, re.I), path
