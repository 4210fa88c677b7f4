"""Offline checks of infra/: Terraform formatting and the 180-day key rotation, checkov
over the Terraform snippets and the Kubernetes manifests (every finding fixed or skipped
inline with a reason), and kubernetes-validate against the Kubernetes API schemas.

What cannot run here: `terraform validate` needs the providers (hashicorp/aws, google,
azurerm), and no Terraform registry is reachable; it runs only when EBK_TF_PLUGIN_DIR
names a provider mirror (`terraform providers mirror DIR` on a connected machine).
Terraform itself is no Debian package and cannot be installed by scripts/setup.sh, so
its tests skip (also under CI) where it is missing; checkov comes from setup.sh's
.cache/checkov venv and kubernetes-validate from the test venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from tests.infra.manifests import (
    CLOUD,
    K8S,
    ROOT,
    k8s_objects,
    sidecar_statefulset,
    tf_block,
)
from tests.support.needs import skip_or_fail

# The oldest and the newest Kubernetes minor the manifests are meant for.
K8S_VERSIONS = ("1.29.0", "1.37.0")
SNIPPETS = ("aws-ebs.tf", "gcp-pd.tf", "azure-disk.tf")


def terraform() -> str:
    tf = shutil.which("terraform")
    if tf is None:
        pytest.skip(
            "terraform not installed (no Debian package; scripts/setup.sh cannot fetch it "
            "offline): fmt/validate not checked"
        )
    return tf


def checkov() -> str:
    for cand in (ROOT / ".cache" / "checkov" / "bin" / "checkov", shutil.which("checkov")):
        if cand and Path(cand).is_file():
            return str(cand)
    skip_or_fail("checkov not found: scripts/setup.sh installs it into .cache/checkov")


def run_checkov(*args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_"))}
    proc = subprocess.run(
        [checkov(), "--skip-download", "--output", "json", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert isinstance(out, dict), "one framework per call"
    return out


# -- Terraform ---------------------------------------------------------------------------


def test_terraform_keys_rotate_every_180_days() -> None:
    aws = tf_block((CLOUD / "aws-ebs.tf").read_text(), 'resource "aws_kms_key"')
    assert re.search(r"^\s*enable_key_rotation\s*=\s*true\s*$", aws, re.M)
    assert re.search(r"^\s*rotation_period_in_days\s*=\s*180\s*$", aws, re.M)
    gcp = tf_block((CLOUD / "gcp-pd.tf").read_text(), 'resource "google_kms_crypto_key"')
    assert re.search(r'^\s*rotation_period\s*=\s*"15552000s"', gcp, re.M)  # 180 * 86400
    az = tf_block((CLOUD / "azure-disk.tf").read_text(), 'resource "azurerm_key_vault_key"')
    policy = tf_block(az, "rotation_policy")
    assert re.search(r'time_after_create\s*=\s*"P180D"', tf_block(policy, "automatic"))
    assert re.search(r'^\s*expire_after\s*=\s*"P365D"', policy, re.M)
    # The disk encryption set follows the new key versions by itself.
    des = tf_block((CLOUD / "azure-disk.tf").read_text(), 'resource "azurerm_disk_encryption_set"')
    assert re.search(r"auto_key_rotation_enabled\s*=\s*true", des)


def test_each_snippet_names_the_provider_version_its_rotation_needs() -> None:
    for name, provider, version in (
        ("aws-ebs.tf", "hashicorp/aws", ">= 5.39"),
        ("gcp-pd.tf", "hashicorp/google", ">= 5.0"),
        ("azure-disk.tf", "hashicorp/azurerm", ">= 3.44"),
    ):
        block = tf_block((CLOUD / name).read_text(), "required_providers")
        assert f'source  = "{provider}"' in block and f'version = "{version}"' in block, name


def test_terraform_fmt_check() -> None:
    proc = subprocess.run(
        [terraform(), "fmt", "-check", "-diff", "-recursive", str(CLOUD)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"run `terraform fmt infra/cloud`:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_terraform_validate_each_snippet(snippet: str, tmp_path: Path) -> None:
    """Each snippet on its own (they are alternatives: they share variable names)."""
    tf = terraform()
    mirror = os.environ.get("EBK_TF_PLUGIN_DIR")
    if not mirror:
        pytest.skip(
            "terraform validate needs the provider plugins and no Terraform registry is "
            "reachable here; set EBK_TF_PLUGIN_DIR to a `terraform providers mirror` dir"
        )
    shutil.copy(CLOUD / snippet, tmp_path / snippet)
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    init = subprocess.run(
        [tf, "init", "-backend=false", "-input=false", f"-plugin-dir={mirror}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    val = subprocess.run(
        [tf, "validate", "-no-color"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert val.returncode == 0, val.stdout + val.stderr


# -- checkov -----------------------------------------------------------------------------


def test_the_checkov_lock_pins_checkov_with_hashes() -> None:
    """requirements-checkov.lock (scripts/lock.sh) covers scripts/checkov.in."""
    wanted = [
        Requirement(line)
        for line in (ROOT / "scripts" / "checkov.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    text = (ROOT / "requirements-checkov.lock").read_text()
    pinned = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M))
    for req in wanted:
        assert req.specifier.contains(pinned[req.name]), f"run scripts/lock.sh: {req}"
    for block in re.split(r"\n(?=\S)", text.split("\n", 2)[2]):
        if "==" in block.split("\n", 1)[0]:
            assert "--hash=sha256:" in block, block


def assert_no_unjustified_findings(report: dict[str, Any]) -> None:
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in results["failed_checks"]]
    assert not failed, f"checkov findings (fix them or skip inline with a reason): {failed}"
    assert not results["parsing_errors"], results["parsing_errors"]
    for c in results["skipped_checks"]:
        reason = (c["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) > 20, f"{c['check_id']} on {c['resource']}: skip without a reason"
    assert report["summary"]["passed"] > 0


def test_checkov_terraform_has_no_unjustified_findings() -> None:
    report = run_checkov("--framework", "terraform", "-d", str(CLOUD.relative_to(ROOT)))
    assert_no_unjustified_findings(report)
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped == {"CKV_GCP_43", "CKV_AZURE_40", "CKV_AZURE_189", "CKV2_AZURE_32"}


def test_checkov_kubernetes_has_no_unjustified_findings(tmp_path: Path) -> None:
    """infra/kubernetes, and the StatefulSet that the sidecar overlay makes of it (its
    patch alone is a partial object that checkov would judge as a whole one)."""
    sidecar = tmp_path / "sidecar"
    sidecar.mkdir()
    (sidecar / "statefulset.yaml").write_text(yaml.safe_dump(sidecar_statefulset()))
    shutil.copy(K8S / "networkpolicy.yaml", sidecar)  # CKV2_K8S_6 looks for one
    checked = set()
    for folder in (K8S, sidecar):
        report = run_checkov("--framework", "kubernetes", "-d", str(folder))
        assert_no_unjustified_findings(report)
        checked |= {c["resource"] for c in report["results"]["passed_checks"]}
    assert {
        "StatefulSet.db.postgres",
        "CronJob.db.ebk-physical-backup",
        "Job.db.ebk-restore",
    } <= checked


def test_checkov_fails_a_key_that_rotates_too_rarely(tmp_path: Path) -> None:
    """Control: without its justified skip, GCP's 180-day rotation is a finding."""
    text = (CLOUD / "gcp-pd.tf").read_text()
    (tmp_path / "gcp-pd.tf").write_text(
        re.sub(r"^\s*#checkov:skip=CKV_GCP_43:.*\n", "", text, flags=re.M)
    )
    report = run_checkov("--framework", "terraform", "-d", str(tmp_path))
    assert [c["check_id"] for c in report["results"]["failed_checks"]] == ["CKV_GCP_43"]


# -- kubernetes-validate -----------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_object_validates_offline(version: str) -> None:
    objects = [(m.where, m.doc) for m in k8s_objects()]
    objects.append(("kubernetes-sidecar (overlay applied)", sidecar_statefulset()))
    kinds = set()
    for where, doc in objects:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} against Kubernetes {version}: {exc.message} at {list(exc.path)}")
        kinds.add(doc["kind"])
    assert {"StatefulSet", "CronJob", "Job", "StorageClass", "NetworkPolicy", "Role"} <= kinds


def test_kubernetes_validate_refuses_a_broken_object() -> None:
    """Control: a misspelt field and a wrong type are refused."""
    (sts,) = [m.doc for m in k8s_objects() if m.kind == "StatefulSet"]
    broken = json.loads(json.dumps(sts))
    broken["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
    broken = json.loads(json.dumps(sts))
    broken["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
