"""The fingerprint comparison rules and the bracketing of physical counts (no server)."""

from __future__ import annotations

from ebk.postgres.fingerprint import (
    DatabasePrint,
    Fingerprints,
    TablePrint,
    bracket,
    compare,
)


def _db(**tables: tuple[int, str | None, int]) -> DatabasePrint:
    return DatabasePrint(
        len(tables),
        {k: TablePrint(r, r, sample, changes) for k, (r, sample, changes) in tables.items()},
    )


def test_bracket_keeps_stable_tables_exact_and_ranges_the_written_ones() -> None:
    before = {
        "app": _db(
            **{"public.a": (10, "s1", 5), "public.b": (10, "s2", 5), "public.c": (7, None, 1)}
        )
    }
    after = {
        "app": _db(
            **{"public.a": (10, "s1", 5), "public.b": (12, "s3", 9), "public.c": (7, None, 4)}
        )
    }
    prints = bracket(before, after)
    tables = prints.databases["app"].tables
    assert (
        tables["public.a"].rows_min,
        tables["public.a"].rows_max,
        tables["public.a"].sample,
    ) == (
        10,
        10,
        "s1",
    )
    assert (
        tables["public.b"].rows_min,
        tables["public.b"].rows_max,
        tables["public.b"].sample,
    ) == (
        10,
        12,
        None,
    )
    # Same count, but written meanwhile: not exact.
    assert not tables["public.c"].exact
    # Round trip through the stored form.
    assert Fingerprints.from_json(prints.to_json()).to_json() == prints.to_json()


def test_compare_names_database_table_expected_and_found() -> None:
    expected = Fingerprints(
        "bracketed",
        {
            "app": DatabasePrint(
                3,
                {
                    "public.a": TablePrint(10, 10, "aaaa"),
                    "public.b": TablePrint(10, 12),
                    "public.gone": TablePrint(1, 1),
                },
            ),
            "missing": DatabasePrint(0),
        },
    )
    found = {
        "app": DatabasePrint(
            2, {"public.a": TablePrint(10, 10, "bbbb"), "public.b": TablePrint(20, 20)}
        )
    }
    findings = {(f.severity, f.database, f.table): f.describe() for f in compare(expected, found)}
    assert (
        findings[("fail", "missing", None)]
        == "database 'missing': expected the database, found no such database"
    )
    assert findings[("fail", "app", None)] == "database 'app': expected 3 tables, found 2"
    assert "no such table" in findings[("fail", "app", "public.gone")]
    assert findings[("warn", "app", "public.b")].endswith("found 20 rows")
    assert "sample digest aaaa" in findings[("fail", "app", "public.a")]
