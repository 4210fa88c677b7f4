"""Chain rules as pure functions: retention keeps whole chains, links must agree, and
the parent is the newest usable physical backup.  Synthetic manifests, no server."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from ebk.app.retention import RetentionPolicy, plan_retention
from ebk.chain import check_link, choose_parent, dependants
from ebk.daemon.jobs import default_registry
from ebk.errors import IntegrityError
from ebk.manifest import Manifest, StoredObject

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
CLUSTER = "7000000000000000001"


def backup(
    day: int, parent: Manifest | None = None, *, kind: str = "physical", lsn: int = 0
) -> Manifest:
    """A physical backup on 2024-06-<day> (an incremental on ``parent`` when given)."""
    return Manifest(
        backup_id=f"202406{day:02d}T020000000000Z-{kind[:3]}{day:03d}",
        kind=kind,
        ebk_version="x",
        system_identifier=CLUSTER,
        server_version="17.2",
        server_version_num=170002,
        start_time=f"2024-06-{day:02d}T02:00:00+00:00",
        stop_time=f"2024-06-{day:02d}T02:05:00+00:00",
        dek_id="dek",
        key_slots=[],
        objects=[StoredObject("backup_manifest.ebk", "backup_manifest", 1, 1, "0" * 64)],
        start_lsn=f"0/{(day * 16 + lsn) << 20:X}",
        stop_lsn=f"0/{((day * 16 + lsn) << 20) + 0x100:X}",
        timeline=1,
        parent=parent.backup_id if parent else None,
        chain_root=(parent.chain_root or parent.backup_id) if parent else None,
        chain_depth=(parent.chain_depth or 0) + 1 if parent else None,
    )


def weekly_chains() -> list[Manifest]:
    """Fulls on the 1st and 8th, a daily incremental on each of the days between."""
    out: list[Manifest] = []
    for day in range(1, 15):
        parent = None if day in (1, 8) else out[-1]
        out.append(backup(day, parent))
    return out


def test_retention_keeps_every_backup_a_kept_incremental_builds_on() -> None:
    backups = weekly_chains()
    policy = RetentionPolicy(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0)
    decisions = {d.backup_id: d for d in plan_retention(backups, policy, NOW)}
    kept = [b.backup_id for b in backups if decisions[b.backup_id].keep]
    # The newest (an incremental of the second week) keeps its chain back to the full of
    # the 8th; the first week's chain has no kept member and goes.
    assert kept == [b.backup_id for b in backups[7:]]
    assert "chain: backup" in decisions[backups[7].backup_id].why
    assert all(not decisions[b.backup_id].keep for b in backups[:7])


def test_a_kept_old_incremental_keeps_its_older_chain() -> None:
    backups = weekly_chains()
    policy = RetentionPolicy(keep_last=1, keep_daily=0, keep_weekly=3, keep_monthly=0)
    kept = {d.backup_id for d in plan_retention(backups, policy, NOW) if d.keep}
    # keep_weekly keeps the newest of ISO weeks 24 (the 14th), 23 (the 9th) and 22 (the
    # 2nd, an incremental on the full of the 1st): the 1st and 2nd stay, 3rd-7th go.
    assert [b.backup_id in kept for b in backups[:8]] == [True, True] + [False] * 5 + [True]


def test_dependants_are_direct_and_indirect() -> None:
    backups = weekly_chains()
    assert [m.backup_id for m in dependants(backups, backups[0].backup_id)] == [
        b.backup_id for b in backups[1:7]
    ]
    assert dependants(backups, backups[13].backup_id) == []


def test_the_parent_is_the_newest_usable_physical_backup() -> None:
    backups = weekly_chains()
    logical = backup(20, kind="logical")
    other_timeline = dataclasses.replace(backup(21), timeline=2)
    other_cluster = dataclasses.replace(backup(22), system_identifier="7000000000000000002")
    candidates = [*backups, logical, other_timeline, other_cluster]
    parent = choose_parent(candidates, cluster=CLUSTER, major=17, timeline=1)
    assert parent is backups[-1]
    assert choose_parent(candidates, cluster=CLUSTER, major=18, timeline=1) is None
    no_manifest = dataclasses.replace(backups[-1], objects=[])
    assert choose_parent([no_manifest], cluster=CLUSTER, major=17, timeline=1) is None


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        ({"system_identifier": "7000000000000000009"}, "of cluster"),
        ({"timeline": 2}, "timeline"),
        ({"chain_depth": 5}, "does not continue it"),
        ({"start_time": "2024-05-01T00:00:00+00:00"}, "not older"),
        ({"start_lsn": "0/1"}, "LSNs are not in order"),
    ],
)
def test_a_link_that_disagrees_with_its_parent_is_refused(
    edit: dict[str, object], complaint: str
) -> None:
    full = backup(1)
    child = dataclasses.replace(backup(2, full), **edit)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match=complaint):
        check_link(child, full)
    check_link(backup(2, full), full)


def test_the_daemon_schedules_incrementals() -> None:
    kind = default_registry()["incremental"]
    assert kind.uses_cluster and "incremental" in kind.summary
