"""`ebk verify` on good backups, at both levels, against real PostgreSQL 15."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.verify.conftest import VerifySource


@pytest.mark.parametrize("kind", ["physical", "logical"])
def test_good_backup_verifies_at_both_levels(source: VerifySource, kind: str) -> None:
    env = source.env
    backup = json.loads(env.run("backup", "--type", kind, "--json").stdout)
    prints = backup["fingerprints"]["databases"]["shop"]
    assert prints["table_count"] == 3
    assert prints["tables"]["public.items"]["rows"] == [2000, 2000]
    assert "sample" in prints["tables"]["public.items"]
    assert "sample" not in prints["tables"]["public.notes"]  # no primary key

    integrity = json.loads(
        env.run("verify", backup["backup_id"], "--level", "integrity", "--json").stdout
    )
    assert [r["passed"] for r in integrity] == [True]
    assert [c["name"] for c in integrity[0]["checks"]] == ["chunks"]

    restored = json.loads(env.run("verify", backup["backup_id"], "--json").stdout)
    record = restored[0]
    assert record["passed"], record
    outcomes = {c["name"]: c["outcome"] for c in record["checks"]}
    if kind == "physical":
        assert outcomes == {
            "restore": "pass",
            "pg_verifybackup": "pass",
            "postgres_start": "pass",
            "pg_amcheck": "pass",
            "fingerprints": "pass",
        }
    else:
        assert outcomes == {"pg_restore": "pass", "pg_amcheck": "skipped", "fingerprints": "pass"}
    assert record["server_version"].startswith("15")
    shown = env.run("show", backup["backup_id"]).stdout
    assert "verified           restore" in shown and "fingerprints" in shown
    assert list(source.scratch.iterdir()) == []


def test_retention_keeps_the_newest_restore_verified_backup(
    source: VerifySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = source.env
    verified = json.loads(env.run("backup", "--type", "logical", "--json").stdout)["backup_id"]
    env.run("verify", verified)
    newer = json.loads(env.run("backup", "--type", "logical", "--json").stdout)["backup_id"]
    env.run("verify", newer, "--level", "integrity")  # integrity alone does not protect
    monkeypatch.setenv("EBK_RETENTION__KEEP_LAST", "1")
    monkeypatch.setenv("EBK_RETENTION__KEEP_DAILY", "0")
    monkeypatch.setenv("EBK_RETENTION__KEEP_WEEKLY", "0")
    monkeypatch.setenv("EBK_RETENTION__KEEP_MONTHLY", "0")
    monkeypatch.setenv("EBK_RETENTION__MIN_AGE", "0")
    plan = json.loads(env.run("retention", "--dry-run", "--json").stdout)
    decisions = {d["backup_id"]: d for d in plan["decisions"]}
    assert decisions[verified]["action"] == "keep"
    assert decisions[verified]["reasons"] == ["newest backup that passed a restore verification"]
    assert decisions[newer]["action"] == "keep"


def test_scratch_dir_not_proven_encrypted_is_refused_under_require(
    source: VerifySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plaintext goes into verify.scratch_dir: under `require` an unproven volume is exit 6."""
    env = source.env
    env.run("backup", "--type", "logical")
    monkeypatch.setenv("EBK_PREFLIGHT__POLICY", "require")
    monkeypatch.setenv("EBK_PREFLIGHT__CLOUD", "false")
    monkeypatch.setenv("EBK_PREFLIGHT__KUBERNETES", "false")
    result = env.run("verify", "latest", expect=6)
    assert str(source.scratch) in result.stderr
    assert list(source.scratch.iterdir()) == []


def test_a_scratch_dir_too_deep_for_a_unix_socket_still_verifies(
    source: VerifySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Unix socket path has 107 bytes: under a deep verify.scratch_dir the scratch server's
    socket goes to a private temporary directory instead of failing the verification (which
    would wrongly report the backup as bad, exit 5). Found verifying inside the container."""
    import tempfile
    from pathlib import Path

    env = source.env
    deep = source.scratch / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    shutil.chown(deep.parent, "postgres")
    shutil.chown(deep, "postgres")
    monkeypatch.setenv("EBK_VERIFY__SCRATCH_DIR", str(deep))
    backup = json.loads(env.run("backup", "--type", "physical", "--json").stdout)["backup_id"]
    before = set(Path(tempfile.gettempdir()).glob("ebk-verify-sock-*"))
    (record,) = json.loads(env.run("verify", backup, "--json").stdout)
    assert record["passed"], record
    assert list(deep.iterdir()) == []
    assert set(Path(tempfile.gettempdir()).glob("ebk-verify-sock-*")) == before
    shutil.rmtree(source.scratch / ("d" * 60))
