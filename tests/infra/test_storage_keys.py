"""The StorageClasses' customer-managed keys come from each storage overlay's env file
(kustomize replacements), and check-storage-keys.sh refuses placeholders and malformed
keys before `kubectl apply` sees them.

The overlays are rendered by tests.infra.manifests.render_storage (the kustomize features
they use); where kubectl is installed, its own `kubectl kustomize` is compared with it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ebk.preflight.kubernetes import storage_verdict
from ebk.preflight.model import Status
from tests.infra.manifests import CLOUDS, K8S, STORAGE, read_env_file, render_storage

CHECK = K8S / "check-storage-keys.sh"
REAL = {
    "aws-ebs": (
        "kmsKeyId",
        "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    ),
    "gce-pd": (
        "disk-encryption-kms-key",
        "projects/acme-prod/locations/europe-west1/keyRings/pgdata/cryptoKeys/pgdata",
    ),
    "azure-disk": (
        "diskEncryptionSetID",
        "/subscriptions/5f1c2b3a-9d8e-4f70-a1b2-c3d4e5f60718/resourceGroups/db-rg"
        "/providers/Microsoft.Compute/diskEncryptionSets/pgdata-des",
    ),
}
MALFORMED = {
    "aws-ebs": "arn:aws:kms:eu-west-1:12345:key/abc",  # account is not 12 digits
    "gce-pd": "pgdata",  # a key name, not the full resource id
    "azure-disk": "/subscriptions/x/resourceGroups/db-rg/diskEncryptionSets/pgdata-des",
}


def rendered(cloud: str, env: dict[str, str] | None = None) -> str:
    return yaml.safe_dump_all([m.doc for m in render_storage(STORAGE / cloud, env)])


def check(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CHECK)], input=stdin, capture_output=True, text=True, timeout=30
    )


def assert_clean_refusal(proc: subprocess.CompletedProcess[str], code: int) -> None:
    assert proc.returncode == code, proc
    assert proc.stdout == "", "a refused manifest must not reach kubectl apply"
    assert "Traceback" not in proc.stderr and "line " not in proc.stderr, proc.stderr


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_shipped_placeholder_key_is_refused(cloud: str) -> None:
    param, _ = REAL[cloud]
    env = read_env_file(STORAGE / cloud / "storage-keys.env")
    assert set(env) == {param} and "PLACEHOLDER" in env[param]
    (sc,) = [m.doc for m in render_storage(STORAGE / cloud)]
    assert sc["parameters"][param] == env[param]  # the replacement reached the class
    proc = check(rendered(cloud))
    assert_clean_refusal(proc, 1)
    assert f"{param} is still the placeholder" in proc.stderr
    assert "storage-keys.env" in proc.stderr


@pytest.mark.parametrize("cloud", CLOUDS)
def test_a_real_key_passes_unchanged_and_is_the_classes_key(cloud: str) -> None:
    param, value = REAL[cloud]
    text = rendered(cloud, {param: value})
    proc = check(text)
    assert proc.returncode == 0, proc.stderr
    assert list(yaml.safe_load_all(proc.stdout)) == list(yaml.safe_load_all(text))
    (sc,) = list(yaml.safe_load_all(proc.stdout))
    assert sc["parameters"][param] == value
    ev = storage_verdict(sc["provisioner"], sc["parameters"], "StorageClass ebk-pg-encrypted")
    assert ev.status is Status.ENCRYPTED and value in ev.key_location


@pytest.mark.parametrize("cloud", CLOUDS)
def test_a_malformed_key_is_refused(cloud: str) -> None:
    param, _ = REAL[cloud]
    proc = check(rendered(cloud, {param: MALFORMED[cloud]}))
    assert_clean_refusal(proc, 1)
    assert f"{param} '{MALFORMED[cloud]}' is not a" in proc.stderr


def test_the_old_documentation_examples_count_as_placeholders() -> None:
    proc = check(
        rendered(
            "aws-ebs",
            {
                "kmsKeyId": "arn:aws:kms:eu-west-1:111122223333:key/"
                "1234abcd-12ab-34cd-56ef-1234567890ab"
            },
        )
    )
    assert_clean_refusal(proc, 1)
    assert "placeholder" in proc.stderr


def test_a_class_without_a_key_and_input_without_a_class_are_refused() -> None:
    (sc,) = [m.doc for m in render_storage(STORAGE / "aws-ebs")]
    del sc["parameters"]["kmsKeyId"]
    proc = check(yaml.safe_dump(sc))
    assert_clean_refusal(proc, 1)
    assert "no customer-managed key" in proc.stderr
    proc = check("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n")
    assert_clean_refusal(proc, 2)
    assert "no StorageClass" in proc.stderr


@pytest.mark.parametrize("cloud", CLOUDS)
def test_kubectl_kustomize_renders_what_the_tests_render(cloud: str, tmp_path: Path) -> None:
    """kubectl is not a Debian 12 package, so CI may not have it: skipped there."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: kubectl kustomize not compared (not in Debian 12)")
    overlay = tmp_path / cloud
    shutil.copytree(STORAGE / cloud, overlay)
    for env in (None, dict([REAL[cloud]])):
        if env is not None:
            (overlay / "storage-keys.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        out = subprocess.run(
            [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        ours = [m.doc for m in render_storage(overlay)]
        assert list(yaml.safe_load_all(out.stdout)) == ours  # the ConfigMap is left out
        assert check(out.stdout).returncode == (1 if env is None else 0)
