"""Retention as a pure function: synthetic dated backups, exact expectations."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from ebk.app.retention import RetentionPolicy, human_age, plan_retention
from ebk.config import RetentionConfig, parse_duration
from ebk.errors import ConfigError

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)  # a Saturday; ISO week 24 is June 10-16


@dataclass(frozen=True)
class Fake:
    backup_id: str
    kind: str
    start_time: str
    system_identifier: str = "7000000000000000001"
    stored_size: int = 100


def fake(when: str, kind: str = "physical", cluster: str = "7000000000000000001") -> Fake:
    t = datetime.fromisoformat(when).replace(tzinfo=UTC)
    return Fake(
        f"{t:%Y%m%dT%H%M%SZ}-{kind[:3]}{cluster[-1]}",
        kind,
        t.isoformat(timespec="seconds"),
        cluster,
    )


def kept(decisions: list) -> set[str]:
    return {d.backup_id[:15] for d in decisions if d.keep}


def test_policy_keeps_exactly_what_the_rules_say() -> None:
    backups = [
        fake(t)
        for t in (
            "2024-06-15T10:00",
            "2024-06-15T04:00",
            "2024-06-14T22:00",
            "2024-06-14T02:00",
            "2024-06-13T02:00",
            "2024-06-12T02:00",
            "2024-06-11T02:00",
            "2024-06-10T02:00",
            "2024-06-09T02:00",
            "2024-06-05T02:00",
            "2024-06-01T02:00",
            "2024-05-31T02:00",
            "2024-05-20T02:00",
            "2024-05-01T02:00",
            "2024-04-15T02:00",
            "2024-03-01T02:00",
            "2024-01-10T02:00",
        )
    ]
    random.Random(4).shuffle(backups)  # input order must not matter
    policy = RetentionPolicy(
        keep_last=2, keep_daily=3, keep_weekly=2, keep_monthly=3, min_age=timedelta(hours=12)
    )
    decisions = plan_retention(backups, policy, NOW)
    assert kept(decisions) == {
        "20240615T100000",  # newest, last 1st, daily, weekly W24, monthly 06, min_age
        "20240615T040000",  # last 2nd, min_age
        "20240614T220000",  # daily 06-14
        "20240613T020000",  # daily 06-13
        "20240609T020000",  # weekly W23 (June 3-9)
        "20240531T020000",  # monthly 05
        "20240415T020000",  # monthly 04
    }
    assert [d.time for d in decisions] == sorted(d.time for d in decisions)  # oldest first
    why = {d.backup_id[:15]: d.reasons for d in decisions}
    assert why["20240615T100000"] == (
        "newest complete backup",
        "keep_last: 1st newest of 2",
        "keep_daily: newest of 2024-06-15",
        "keep_weekly: newest of 2024-W24",
        "keep_monthly: newest of 2024-06",
        "min_age: 2h old, younger than 12h",
    )
    assert why["20240615T040000"] == (
        "keep_last: 2nd newest of 2",
        "min_age: 8h old, younger than 12h",
    )
    assert why["20240609T020000"] == ("keep_weekly: newest of 2024-W23",)
    assert why["20240531T020000"] == ("keep_monthly: newest of 2024-05",)
    assert why["20240110T020000"] == ("no rule keeps it",)
    assert all(d.action == "delete" for d in decisions if not d.keep)


def test_newest_is_kept_even_when_every_rule_is_zero() -> None:
    backups = [fake("2023-01-01T00:00"), fake("2023-01-02T00:00")]
    zero = RetentionPolicy(0, 0, 0, 0, timedelta(0))
    decisions = plan_retention(backups, zero, NOW)
    assert kept(decisions) == {"20230102T000000"}
    assert decisions[1].reasons == ("newest complete backup",)


def test_kinds_and_clusters_are_counted_separately() -> None:
    backups = [
        fake("2024-06-01T00:00", "physical"),
        fake("2024-06-02T00:00", "physical"),
        fake("2024-06-03T00:00", "logical"),
        fake("2024-06-04T00:00", "logical"),
        fake("2024-06-05T00:00", "physical", cluster="7000000000000000002"),
    ]
    policy = RetentionPolicy(1, 0, 0, 0, timedelta(0))
    decisions = plan_retention(backups, policy, NOW)
    assert {(d.kind, d.cluster[-1], d.time.day) for d in decisions if d.keep} == {
        ("physical", "1", 2),
        ("logical", "1", 4),
        ("physical", "2", 5),
    }
    assert len([d for d in decisions if not d.keep]) == 2


def test_windows_count_periods_that_have_backups() -> None:
    # Backups stopped 40 days ago: daily=3 still keeps the last three days that had one.
    backups = [fake(f"2024-05-0{d}T01:00") for d in range(1, 7)]
    policy = RetentionPolicy(0, 3, 0, 0, timedelta(0))
    assert kept(plan_retention(backups, policy, NOW)) == {
        "20240506T010000",
        "20240505T010000",
        "20240504T010000",
    }


def test_min_age_protects_young_backups_and_unreadable_times_are_kept() -> None:
    young = [fake((NOW - timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M")) for h in (1, 5, 30)]
    odd = Fake("broken", "physical", "not a time")
    policy = RetentionPolicy(1, 0, 0, 0, timedelta(days=1))
    decisions = plan_retention([*young, odd], policy, NOW)
    assert {d.backup_id for d in decisions if d.keep} == {
        young[0].backup_id,
        young[1].backup_id,
        "broken",
    }
    assert "unreadable" in next(d for d in decisions if d.backup_id == "broken").why


def test_invariants_on_random_sets() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        backups = [
            fake(
                (NOW - timedelta(minutes=rng.randrange(0, 400 * 24 * 60))).strftime(
                    "%Y-%m-%dT%H:%M"
                ),
                rng.choice(["physical", "logical"]),
            )
            for _ in range(rng.randrange(1, 40))
        ]
        backups = list({b.backup_id: b for b in backups}.values())
        policy = RetentionPolicy(
            rng.randrange(0, 5),
            rng.randrange(0, 8),
            rng.randrange(0, 5),
            rng.randrange(0, 13),
            timedelta(hours=rng.randrange(0, 72)),
        )
        decisions = plan_retention(backups, policy, NOW)
        assert len(decisions) == len(backups)
        for kind in ("physical", "logical"):
            mine = sorted((d for d in decisions if d.kind == kind), key=lambda d: d.time)
            if mine:
                assert mine[-1].keep
            assert all(d.keep for d in mine[len(mine) - policy.keep_last :] if policy.keep_last)
            assert all(d.keep for d in mine if NOW - d.time < policy.min_age)
            kept_count = sum(d.keep for d in mine)
            bound = (
                1
                + policy.keep_last
                + policy.keep_daily
                + policy.keep_weekly
                + policy.keep_monthly
                + sum(NOW - d.time < policy.min_age for d in mine)
            )
            assert kept_count <= bound


def test_policy_from_config_and_durations() -> None:
    policy = RetentionPolicy.from_config(RetentionConfig(keep_last=3, min_age="36h"))
    assert policy.min_age == timedelta(hours=36)
    assert policy.keep_last == 3
    assert "min_age=1d12h" in policy.describe()
    assert parse_duration("90s", "x") == 90
    assert parse_duration("2w", "x") == 14 * 86400
    assert parse_duration("0", "x") == 0
    for bad in ("", "soon", "-1d", "1y"):
        with pytest.raises(ConfigError, match="not a duration"):
            parse_duration(bad, "retention.min_age")
    assert human_age(timedelta(days=1, hours=2, minutes=3)) == "1d2h3m"
    with pytest.raises(ConfigError, match="keep_daily"):
        RetentionConfig(keep_daily=-1).validate()
