"""Data fingerprints: what the source held, recorded in the signed manifest, so a
verification restore can compare against it.

Per database: the number of permanent user tables, and for the largest
``MAX_TABLES`` of them the row count and, where it is cheap (a primary key of
non-collatable columns, read through its index), an MD5 over the first
``SAMPLE_ROWS`` rows in key order.  Rows are rendered with fixed session
settings (DateStyle, TimeZone, ...) so the same data gives the same text on
the source and on a scratch server.

Consistency (docs/format.md, "Fingerprints"):

- logical: counted inside the very snapshot pg_dump uses (``pg_export_snapshot``
  + ``pg_dump --snapshot``), so the dump and its fingerprint agree exactly;
- physical: a base backup is consistent only at its end point, which no SQL
  snapshot can see.  Each table is counted before the backup starts and
  again after it ended; a table whose count, sample and modification counter
  did not change in between is ``exact`` (compared exactly); one that changed
  records the range seen, and is only checked loosely (a warning outside it).

Stored as the manifest extension ``fingerprints`` (older readers keep it as an
unknown, authenticated member).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import sql

from ebk.config import PostgresConfig
from ebk.errors import PostgresError
from ebk.postgres.connection import connect, list_databases

T = TypeVar("T")
log = structlog.get_logger("ebk.fingerprint")

EXTENSION = "fingerprints"
VERSION = 1
MAX_TABLES = 200  # per database: the largest ones
SAMPLE_ROWS = 100
COUNT_TIMEOUT_MS = 120_000  # one table's count; on timeout the table is recorded without rows
MAX_DATABASES = 1000

# Output of every type the sample renders must not depend on server or client defaults.
SESSION_SETTINGS = (
    "SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres';"
    " SET extra_float_digits = 1; SET bytea_output = 'hex'; SET lc_monetary = 'C';"
    " SET xmloption = 'content'"
)

_TABLES = """
SELECT c.oid, n.nspname, c.relname, pg_relation_size(c.oid) AS size,
       coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0) AS changes
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
ORDER BY size DESC, n.nspname, c.relname
"""

_PK_COLUMNS = """
SELECT a.attname, a.attcollation
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY k.ord
"""


@dataclass
class TablePrint:
    """One table: rows seen (min == max when exact) and the sample digest when stable."""

    rows_min: int | None
    rows_max: int | None
    sample: str | None = None
    changes: int = 0

    @property
    def exact(self) -> bool:
        return self.rows_min is not None and self.rows_min == self.rows_max

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"rows": [self.rows_min, self.rows_max]}
        if self.sample is not None:
            doc["sample"] = self.sample
        return doc


@dataclass
class DatabasePrint:
    table_count: int
    tables: dict[str, TablePrint] = field(default_factory=dict)  # "schema.table"
    limited: bool = False  # more tables than MAX_TABLES: only the largest recorded

    def to_json(self) -> dict[str, Any]:
        return {
            "table_count": self.table_count,
            "limited": self.limited,
            "tables": {k: v.to_json() for k, v in sorted(self.tables.items())},
        }


@dataclass
class Fingerprints:
    consistency: str  # "snapshot" (exact) | "bracketed" (physical: before/after the backup)
    databases: dict[str, DatabasePrint] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "consistency": self.consistency,
            "databases": {k: v.to_json() for k, v in sorted(self.databases.items())},
        }

    @classmethod
    def from_json(cls, doc: Any) -> Fingerprints:
        """Parse the (already authenticated) extension; malformed -> ValueError."""
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError("unknown fingerprint version")
        consistency = doc.get("consistency")
        dbs = doc.get("databases")
        if consistency not in ("snapshot", "bracketed") or not isinstance(dbs, dict):
            raise ValueError("malformed fingerprints")
        out = cls(consistency)
        for name, raw in dbs.items():
            if not isinstance(raw, dict) or not isinstance(raw.get("tables"), dict):
                raise ValueError(f"malformed fingerprint of database {name!r}")
            count = raw.get("table_count")
            if not isinstance(count, int):
                raise ValueError(f"malformed table count of database {name!r}")
            db = DatabasePrint(count, limited=bool(raw.get("limited")))
            for table, t in raw["tables"].items():
                rows = t.get("rows") if isinstance(t, dict) else None
                if not (isinstance(rows, list) and len(rows) == 2):
                    raise ValueError(f"malformed fingerprint of table {table!r}")
                sample = t.get("sample")
                db.tables[str(table)] = TablePrint(
                    _opt_int(rows[0]),
                    _opt_int(rows[1]),
                    sample if isinstance(sample, str) else None,
                )
            out.databases[str(name)] = db
        return out


def _opt_int(v: Any) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError("row counts must be integers")
    return v


# -- capturing -------------------------------------------------------------------------


def _tables(conn: psycopg.Connection) -> list[tuple[int, str, str, int]]:
    return [(r[0], f"{r[1]}.{r[2]}", r[1], int(r[4])) for r in conn.execute(_TABLES).fetchall()]


def _sample(conn: psycopg.Connection, oid: int, schema: str, name: str) -> str | None:
    """MD5 of the first rows in primary-key order; None when the key has collatable columns."""
    cols = conn.execute(_PK_COLUMNS, (oid,)).fetchall()
    if not cols or any(c[1] != 0 for c in cols):
        return None
    order = sql.SQL(", ").join(sql.Identifier("t", c[0]) for c in cols)
    inner = sql.SQL(", ").join(sql.Identifier(c[0]) for c in cols)
    query = sql.SQL(
        "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {order}), '')) "
        "FROM (SELECT * FROM {table} ORDER BY {inner} LIMIT {n}) t"
    ).format(
        order=order,
        table=sql.Identifier(schema, name),
        inner=inner,
        n=sql.Literal(SAMPLE_ROWS),
    )
    row = conn.execute(query).fetchone()
    return str(row[0]) if row else None


def capture_database(conn: psycopg.Connection) -> DatabasePrint:
    """Fingerprint the database ``conn`` is connected to, in its current transaction."""
    conn.execute(SESSION_SETTINGS)
    tables = _tables(conn)
    db = DatabasePrint(len(tables), limited=len(tables) > MAX_TABLES)
    for oid, qualified, schema, changes in tables[:MAX_TABLES]:
        name = qualified[len(schema) + 1 :]
        conn.execute("SAVEPOINT ebk_fp")
        try:
            conn.execute(f"SET LOCAL statement_timeout = {COUNT_TIMEOUT_MS}")
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
            ).fetchone()
            rows = int(row[0]) if row else None
            sample = _sample(conn, oid, schema, name)
            conn.execute("RELEASE SAVEPOINT ebk_fp")
        except (psycopg.errors.QueryCanceled, psycopg.errors.InsufficientPrivilege):
            # Too slow, or not readable by this role: recorded without rows, never compared.
            conn.execute("ROLLBACK TO SAVEPOINT ebk_fp")
            rows, sample = None, None
        db.tables[qualified] = TablePrint(rows, rows, sample, changes)
    return db


@contextmanager
def _transaction(cfg: PostgresConfig, database: str) -> Iterator[psycopg.Connection]:
    try:
        with connect(cfg, dbname=database) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn
            conn.execute("COMMIT")
    except psycopg.Error as exc:
        raise PostgresError(
            f"fingerprinting database {database!r} failed: {str(exc).strip()}",
            hint="the backup role needs pg_read_all_data (see infra/postgres/ebk-role.sql)",
        ) from None


@contextmanager
def exported_snapshot(
    cfg: PostgresConfig, database: str
) -> Iterator[tuple[str, psycopg.Connection]]:
    """A REPEATABLE READ transaction and its exported snapshot id (for pg_dump --snapshot)."""
    with _transaction(cfg, database) as conn:
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        yield str(row[0]), conn


def capture_databases(
    cfg: PostgresConfig, databases: Iterable[str], *, tolerant: bool = False
) -> dict[str, DatabasePrint]:
    """Fingerprint each database in its own transaction.

    ``tolerant`` (physical backups, whose role may hold only REPLICATION): a
    database that cannot be fingerprinted is logged and left out instead of
    failing the backup; verification then has nothing to compare for it.
    """
    out: dict[str, DatabasePrint] = {}
    for database in list(databases)[:MAX_DATABASES]:
        try:
            with _transaction(cfg, database) as conn:
                out[database] = capture_database(conn)
        except PostgresError as exc:
            if not tolerant:
                raise
            log.warning("database not fingerprinted", database=database, error=exc.message)
    return out


def bracket(before: dict[str, DatabasePrint], after: dict[str, DatabasePrint]) -> Fingerprints:
    """Physical: merge the counts taken before and after the backup (module docstring)."""
    out = Fingerprints("bracketed")
    for database, late in after.items():
        early = before.get(database)
        if early is None:  # created during the backup: nothing stable to say
            continue
        merged = DatabasePrint(late.table_count, limited=late.limited or early.limited)
        if early.table_count != late.table_count:
            merged.table_count = -1  # changed during the backup: not compared
        for table, b in late.tables.items():
            a = early.tables.get(table)
            if a is None or a.rows_min is None or b.rows_min is None:
                merged.tables[table] = TablePrint(None, None)
                continue
            stable = a.rows_min == b.rows_min and a.sample == b.sample and a.changes == b.changes
            merged.tables[table] = TablePrint(
                min(a.rows_min, b.rows_min),
                max(a.rows_min, b.rows_min),
                b.sample if stable else None,
            )
            if not stable and a.rows_min == b.rows_min:
                # Same count, but the table was written meanwhile: a range of one value
                # would claim exactness; widen it to mark it inexact.
                merged.tables[table].rows_max = b.rows_min + 1
        out.databases[database] = merged
    return out


def recorded(fingerprints: Fingerprints) -> dict[str, Any]:
    """The manifest extension as stored.

    The one seam for tests that need a backup with a wrong fingerprint: they
    replace this function (pytest monkeypatch, in-process); no config key or
    command-line option reaches it.
    """
    return fingerprints.to_json()


def physical_fingerprints(
    cfg: PostgresConfig, conn: psycopg.Connection | None, backup: Callable[[], T]
) -> tuple[T, dict[str, Any]]:
    """Run ``backup`` between two counts of every database (module docstring)."""
    databases = list_databases(cfg, conn)
    before = capture_databases(cfg, databases, tolerant=True)
    result = backup()
    after = capture_databases(cfg, databases, tolerant=True)
    return result, recorded(bracket(before, after))


# -- comparing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One difference: where, what was recorded, what the restored copy holds."""

    severity: str  # "fail" | "warn"
    database: str
    table: str | None
    expected: str
    found: str

    def describe(self) -> str:
        where = f"database {self.database!r}" + (f" table {self.table}" if self.table else "")
        return f"{where}: expected {self.expected}, found {self.found}"


def compare(expected: Fingerprints, found: dict[str, DatabasePrint]) -> list[Finding]:
    findings: list[Finding] = []
    for database, exp in sorted(expected.databases.items()):
        got = found.get(database)
        if got is None:
            findings.append(Finding("fail", database, None, "the database", "no such database"))
            continue
        if exp.table_count >= 0 and not exp.limited and exp.table_count != got.table_count:
            findings.append(
                Finding("fail", database, None, f"{exp.table_count} tables", f"{got.table_count}")
            )
        for table, t in sorted(exp.tables.items()):
            g = got.tables.get(table)
            if g is None:
                findings.append(Finding("fail", database, table, "the table", "no such table"))
                continue
            if t.rows_min is None or t.rows_max is None or g.rows_min is None:
                continue
            if t.exact and g.rows_min != t.rows_min:
                findings.append(
                    Finding("fail", database, table, f"{t.rows_min} rows", f"{g.rows_min} rows")
                )
            elif not t.exact and not t.rows_min <= g.rows_min <= t.rows_max:
                findings.append(
                    Finding(
                        "warn",
                        database,
                        table,
                        f"{t.rows_min}..{t.rows_max} rows (written during the backup)",
                        f"{g.rows_min} rows",
                    )
                )
            if t.sample is not None and g.sample is not None and t.sample != g.sample:
                findings.append(
                    Finding(
                        "fail",
                        database,
                        table,
                        f"sample digest {t.sample[:12]}",
                        f"{g.sample[:12]} (the first {SAMPLE_ROWS} rows by primary key differ)",
                    )
                )
    return findings
