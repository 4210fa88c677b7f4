"""A stand-in for the Kubernetes API server that authorizes like RBAC.

No cluster can run on this machine, so the API server is replaced by a small local
HTTP server (said here, as the standards ask): it serves the objects a test gives it
(pod, PVC, PV, StorageClass built from infra/kubernetes) and answers each GET only when
a rule bound to the caller's service account in the manifests allows it, matching
apiGroups, resources, verbs and resourceNames the way the RBAC authorizer does.  It
records which rules were used, so a test can tell a missing grant from an unused one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.infra.manifests import Manifest
from tests.support.jsonapi import JsonApiServer


@dataclass(frozen=True)
class Rule:
    origin: str  # e.g. "ClusterRole/ebk-preflight via ClusterRoleBinding/ebk-preflight #1"
    namespace: str | None  # None: every namespace and the cluster-scoped resources
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    resource_names: tuple[str, ...]

    def allows(
        self, group: str, namespace: str | None, resource: str, verb: str, name: str
    ) -> bool:
        if self.namespace is not None and namespace != self.namespace:
            return False
        return (
            (group in self.api_groups or "*" in self.api_groups)
            and (resource in self.resources or "*" in self.resources)
            and (verb in self.verbs or "*" in self.verbs)
            and (not self.resource_names or name in self.resource_names)
        )


def rules_for(manifests: list[Manifest], namespace: str, service_account: str) -> list[Rule]:
    """Every rule bound to system:serviceaccount:<namespace>:<service_account>."""
    roles = {
        (m.kind, m.doc["metadata"].get("namespace"), m.name): m.doc
        for m in manifests
        if m.kind in ("Role", "ClusterRole")
    }
    out: list[Rule] = []
    for m in manifests:
        if m.kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        binding_ns = m.doc["metadata"].get("namespace") if m.kind == "RoleBinding" else None
        subjects = m.doc.get("subjects") or []
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == service_account
            and s.get("namespace", binding_ns) == namespace
            for s in subjects
        ):
            continue
        ref = m.doc["roleRef"]
        role_ns = binding_ns if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        assert role is not None, f"{m.where}: roleRef {ref['kind']}/{ref['name']} is not defined"
        for i, r in enumerate(role.get("rules") or []):
            out.append(
                Rule(
                    f"{ref['kind']}/{ref['name']} rule {i} via {m.kind}/{m.name}",
                    binding_ns,
                    tuple(r.get("apiGroups") or ()),
                    tuple(r.get("resources") or ()),
                    tuple(r.get("verbs") or ()),
                    tuple(r.get("resourceNames") or ()),
                )
            )
    return out


def parse_path(path: str) -> tuple[str, str | None, str, str]:
    """(apiGroup, namespace or None, resource, name) of a GET of one object."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        raise ValueError(path)
    if len(rest) == 4 and rest[0] == "namespaces":
        return group, rest[1], rest[2], rest[3]
    if len(rest) == 2:
        return group, None, rest[0], rest[1]
    raise ValueError(path)


@dataclass
class RbacApiServer:
    """Serves ``objects`` (URL path -> JSON) to bearer ``token`` under ``rules``."""

    rules: list[Rule]
    objects: dict[str, Any]
    token: str
    used: set[str] = field(default_factory=set)
    denied: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = JsonApiServer(
            lambda path, headers: self.answer(path, headers.get("Authorization", ""))
        )
        self.url = self.http.url

    def answer(self, path: str, authorization: str) -> tuple[int, Any]:
        if authorization != f"Bearer {self.token}":
            return 401, {"kind": "Status", "reason": "Unauthorized"}
        group, namespace, resource, name = parse_path(path)
        allowing = [r for r in self.rules if r.allows(group, namespace, resource, "get", name)]
        if not allowing:
            self.denied.append(path)
            return 403, {
                "kind": "Status",
                "reason": "Forbidden",
                "message": f"get {resource} {name!r} is forbidden",
            }
        self.used.update(r.origin for r in allowing)
        path_only = path.split("?", 1)[0]
        if path_only not in self.objects:
            return 404, {"kind": "Status", "reason": "NotFound"}
        self.served.append(path_only)
        return 200, self.objects[path_only]

    def close(self) -> None:
        self.http.close()
