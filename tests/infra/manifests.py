"""Loading infra/: every YAML document, the Compose file with its ${VAR:-default}
interpolation, and every pod spec a Kubernetes manifest would create."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "kubernetes"
SIDECAR = INFRA / "kubernetes-sidecar"
COMPOSE_DIR = INFRA / "docker" / "prod"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.prod.yml"
CLOUD = INFRA / "cloud"
ROLE_SQL = INFRA / "postgres" / "ebk-role.sql"

Doc = dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    path: Path
    index: int
    doc: Doc

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}#{self.index}"

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.doc.get("metadata") or {}).get("name", ""))


def yaml_files() -> list[Path]:
    return sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])


def load_all() -> list[Manifest]:
    """Every YAML document under infra/ (Compose file included)."""
    out = []
    for path in yaml_files():
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}#{i} is not a mapping"
                out.append(Manifest(path, i, doc))
    return out


def k8s_objects() -> list[Manifest]:
    """The Kubernetes API objects of infra/kubernetes, with the StorageClasses as their
    storage overlays render them (the sidecar overlay's patch is a partial object:
    sidecar_statefulset() applies it)."""
    return [
        m
        for m in load_all()
        if m.path.parent == K8S and "apiVersion" in m.doc and m.kind != "Kustomization"
    ] + [m for cloud in CLOUDS for m in render_storage(STORAGE / cloud)]


# -- the storage overlays: infra/kubernetes/storage/<cloud> -------------------------------

STORAGE = K8S / "storage"
CLOUDS = ("aws-ebs", "gce-pd", "azure-disk")


def read_env_file(path: Path) -> dict[str, str]:
    """A kustomize env file: KEY=VALUE lines; blank lines and # comments skipped."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not KEY=VALUE"
            out[key.strip()] = value
    return out


def render_storage(overlay: Path, env: Mapping[str, str] | None = None) -> list[Manifest]:
    """What ``kubectl kustomize OVERLAY`` makes of a storage overlay: its resources, with
    the configMapGenerator's env file (or ``env`` instead) copied in by the replacements,
    and the local-config ConfigMap left out.  Only the kustomize features the overlays
    use; tests/infra/test_storage_keys.py compares it with kubectl kustomize where kubectl
    is installed."""
    kust = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    docs: list[Manifest] = []
    for res in kust["resources"]:
        path = overlay / res
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append(Manifest(path, i, doc))
    configmaps: dict[str, dict[str, str]] = {}
    for gen in kust.get("configMapGenerator", []):
        assert gen["options"]["annotations"]["config.kubernetes.io/local-config"] == "true"
        data: dict[str, str] = {}
        for env_file in gen.get("envs", []):
            data.update(read_env_file(overlay / env_file) if env is None else env)
        configmaps[gen["name"]] = data
    for rep in kust.get("replacements", []):
        src = rep["source"]
        assert src["kind"] == "ConfigMap" and src["fieldPath"].startswith("data."), src
        value = configmaps[src["name"]][src["fieldPath"].removeprefix("data.")]
        for target in rep["targets"]:
            sel = target["select"]
            hits = [m for m in docs if m.kind == sel["kind"] and m.name == sel["name"]]
            assert hits, f"{overlay}: replacement target {sel} selects nothing"
            for m in hits:
                for field_path in target["fieldPaths"]:
                    *parents, last = field_path.split(".")
                    node = m.doc
                    for part in parents:
                        node = node[part]
                    # kustomize fails on a missing target field (no create: true here)
                    assert last in node, f"{m.where}: no field {field_path}"
                    node[last] = value
    return docs


def of_kind(kind: str, manifests: list[Manifest] | None = None) -> list[Manifest]:
    return [m for m in (manifests if manifests is not None else k8s_objects()) if m.kind == kind]


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    """Compose's ${VAR} / ${VAR:-default} substitution, recursively."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    return value


def compose(environ: Mapping[str, str] | None = None) -> Doc:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    resolved = interpolate(doc, environ or {})
    assert isinstance(resolved, dict)
    return resolved


@dataclass(frozen=True)
class PodSpec:
    """A pod template, named after the object that creates it."""

    where: str
    owner: str
    spec: Doc
    metadata: Doc

    def containers(self) -> list[Doc]:
        return [*(self.spec.get("initContainers") or []), *self.spec["containers"]]


def pod_specs(manifests: list[Manifest]) -> Iterator[PodSpec]:
    for m in manifests:
        template: Doc | None = None
        if m.kind in ("StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job"):
            template = m.doc["spec"]["template"]
        elif m.kind == "CronJob":
            template = m.doc["spec"]["jobTemplate"]["spec"]["template"]
        elif m.kind == "Pod":
            template = {"metadata": m.doc.get("metadata", {}), "spec": m.doc["spec"]}
        if template is not None:
            yield PodSpec(
                f"{m.where} {m.kind}/{m.name}",
                f"{m.kind}/{m.name}",
                template["spec"],
                template.get("metadata") or {},
            )


def sidecar_statefulset() -> Doc:
    """The StatefulSet of infra/kubernetes with infra/kubernetes-sidecar's patch applied
    the way a strategic merge does for these fields (containers and volumes merged by
    name, scalars replaced): enough to check the pod it creates."""
    base = copy.deepcopy(of_kind("StatefulSet")[0].doc)
    patch = yaml.safe_load((SIDECAR / "ebk-sidecar-patch.yaml").read_text())
    base["metadata"].setdefault("annotations", {}).update(
        patch["metadata"].get("annotations") or {}
    )
    pod = base["spec"]["template"]
    ppod = patch["spec"]["template"]
    pod.setdefault("metadata", {}).setdefault("annotations", {}).update(
        (ppod.get("metadata") or {}).get("annotations") or {}
    )
    for key, value in ppod["spec"].items():
        if key in ("containers", "volumes"):
            by_name = {item["name"]: item for item in pod["spec"].get(key, [])}
            by_name.update({item["name"]: item for item in value})
            pod["spec"][key] = list(by_name.values())
        else:
            pod["spec"][key] = value
    return base


def statefulset_pod(sts: Doc, ordinal: int = 0) -> tuple[str, Doc]:
    """(pod name, pod spec) as the StatefulSet controller creates it: one PVC volume per
    volumeClaimTemplate, claim <template>-<statefulset>-<ordinal>."""
    name = f"{sts['metadata']['name']}-{ordinal}"
    spec = copy.deepcopy(sts["spec"]["template"]["spec"])
    for tpl in sts["spec"].get("volumeClaimTemplates") or []:
        claim = f"{tpl['metadata']['name']}-{name}"
        spec.setdefault("volumes", []).append(
            {"name": tpl["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}}
        )
    return name, spec


def tf_block(text: str, header: str) -> str:
    """The body of the first block that starts with ``header`` (braces counted)."""
    start = text.index(header)
    open_at = text.index("{", start)
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    raise AssertionError(f"unbalanced braces after {header!r}")
