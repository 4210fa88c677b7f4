"""`ebk verify` on good backups, at both levels, against real PostgreSQL 15."""

from __future__ import annotations

import json

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
            "pg_amcheck": "pass",
            "fingerprints": "pass",
        }
    else:
        assert outcomes == {"pg_restore": "pass", "pg_amcheck": "skipped", "fingerprints": "pass"}
    assert record["server_version"].startswith("15")
    assert list(source.scratch.iterdir()) == []
