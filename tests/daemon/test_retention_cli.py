"""`ebk retention` on real backups of a real PostgreSQL: dry run, deletion, the lease."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ebk.repository.layout import LEASE_OBJECT
from ebk.repository.lease import LeaseRecord
from ebk.storage.local import LocalStorage
from tests.support.ebkenv import make_env
from tests.support.postgres import PgCluster

POLICY = (
    "[retention]\nkeep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n"
    'min_age = "0"\n\n'
)


def test_retention_cli_on_real_manifests(tmp_path: Path, pg_cluster: PgCluster) -> None:
    env = make_env(tmp_path / "ebk", pg_cluster, extra=POLICY)
    logical = []
    for _ in range(3):
        out = env.run("backup", "--type", "logical", "--database", "postgres", "--json")
        logical.append(json.loads(out.stdout)["backup_id"])
        time.sleep(1.1)  # distinct start times (second resolution)
    physical = json.loads(env.run("backup", "--type", "physical", "--json").stdout)["backup_id"]

    dry = json.loads(env.run("retention", "--dry-run", "--json").stdout)
    actions = {d["backup_id"]: (d["action"], d["reasons"]) for d in dry["decisions"]}
    assert actions[logical[0]] == ("delete", ["no rule keeps it"])
    assert actions[logical[1]] == ("keep", ["keep_last: 2nd newest of 2"])
    assert actions[logical[2]] == ("keep", ["newest complete backup", "keep_last: 1st newest of 2"])
    # Counted per kind: the only physical backup is the newest of its kind.
    assert actions[physical][0] == "keep" and "newest complete backup" in actions[physical][1]
    assert dry["dry_run"] is True and dry["deleted"] == []
    assert len(json.loads(env.run("list", "--json").stdout)) == 4  # a dry run deletes nothing

    table = env.run("retention", "--dry-run").stdout
    assert "policy: keep_last=2 keep_daily=0" in table
    row = next(line for line in table.splitlines() if line.startswith(logical[0]))
    assert "would delete" in row and "no rule keeps it" in row
    assert "would delete 1 of 4 backups" in table

    done = env.run("retention").stdout
    assert "deleted 1 of 4 backups" in done
    remaining = {b["backup_id"] for b in json.loads(env.run("list", "--json").stdout)}
    assert remaining == {logical[1], logical[2], physical}
    storage = LocalStorage(env.repo_dir)
    names = [o.name for o in storage.list()]
    assert not [n for n in names if logical[0] in n]  # every object of it is gone
    assert LEASE_OBJECT not in names  # the lease was released

    # Another process holds the deletion lease: exit 8, naming it; nothing deleted.
    holder = LeaseRecord(
        "t" * 32,
        "alice",
        "db7.example",
        4242,
        "repo check --clean",
        "2026-01-01T00:00:00+00:00",
        time.time() + 300,
    )
    storage.put_bytes(LEASE_OBJECT, holder.to_json())
    busy = env.run("retention", expect=8)
    assert "alice on db7.example (pid 4242, repo check --clean)" in busy.output
    assert len(json.loads(env.run("list", "--json").stdout)) == 3
    assert env.run("retention", "--dry-run").exit_code == 0  # a dry run needs no lease
