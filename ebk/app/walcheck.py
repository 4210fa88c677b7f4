"""`ebk wal check`: is the WAL archive continuous from the oldest backup to now?

The range starts at the segment holding the oldest complete physical
backup's start LSN and ends at the newest archived segment (with --switch:
the segment PostgreSQL just closed, once it is archived).  Timeline switches
follow the newest timeline's history file (authenticated like every WAL
object): before a switch point the parent timeline's segments are expected,
from it on the child's.  Every expected file is downloaded and authenticated;
listing names alone proves nothing in a hostile bucket.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg

from ebk.app.wal import WalKeyring, fetch_authenticated, segment_number
from ebk.errors import BackupNotFound, EbkError, IntegrityError, ObjectNotFound
from ebk.format.walobject import HISTORY, SEGMENT
from ebk.postgres.connection import connect
from ebk.runtime import Runtime
from ebk.text import printable

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
CHECK_WORKERS = 4


def parse_lsn(text: str) -> int:
    hi, sep, lo = text.strip().partition("/")
    if not sep:
        raise ValueError(f"{text!r} is not an LSN (expected X/Y in hex)")
    return (int(hi, 16) << 32) | int(lo, 16)


def segment_name(timeline: int, lsn: int, segment_size: int) -> str:
    per_log = 0x100000000 // segment_size
    segno = lsn // segment_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def name_of(timeline: int, segno: int, segment_size: int) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def parse_history(text: str) -> list[tuple[int, int]]:
    """(parent timeline, switch LSN) per line of an authenticated .history file."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        out.append((int(parts[0]), parse_lsn(parts[1])))
    return out


@dataclass
class CheckReport:
    start: str | None = None
    end: str | None = None
    checked: int = 0
    gaps: list[str] = field(default_factory=list)
    unauthenticated: list[str] = field(default_factory=list)
    timelines: list[int] = field(default_factory=list)
    switched: str | None = None
    current: str | None = None  # PostgreSQL's current WAL file, when it answered
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.gaps and not self.unauthenticated and self.start is not None

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "from": self.start,
            "to": self.end,
            "checked": self.checked,
            "gaps": self.gaps,
            "unauthenticated": self.unauthenticated,
            "timelines": self.timelines,
            "switched": self.switched,
            "current": self.current,
            "note": self.note,
        }

    def describe(self) -> str:
        if self.start is None:
            return f"WAL archive: nothing to check ({self.note})"
        lines = [
            f"WAL archive from {self.start} to {self.end}: {self.checked} file(s) authenticated, "
            f"timelines {', '.join(str(t) for t in self.timelines) or '-'}"
        ]
        if self.current:
            lines.append(
                f"  PostgreSQL writes {self.current} now (the newest archived is {self.end})"
            )
        if self.switched:
            lines.append(f"  pg_switch_wal(): {self.switched} archived and authenticated")
        for name in self.gaps:
            lines.append(f"  gap: {printable(name)} is missing")
        for name in self.unauthenticated:
            lines.append(f"  refused: {printable(name)} does not authenticate")
        lines.append("  continuous" if self.ok else "  NOT continuous: PITR across a gap fails")
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        if self.start is None:
            raise BackupNotFound(
                f"cannot check the WAL archive: {self.note}",
                hint="take one with `ebk backup --type physical`",
            )
        if not self.ok:
            first = (self.gaps + self.unauthenticated)[0]
            raise IntegrityError(
                f"the WAL archive is not continuous: {len(self.gaps)} gap(s), "
                f"{len(self.unauthenticated)} object(s) that do not authenticate "
                f"(first: {printable(first)})",
                hint="take a new base backup now (PITR works from it onwards); find why "
                "archiving failed in PostgreSQL's log (archive_command)",
            )


def _switch(runtime: Runtime) -> str:
    with connect(runtime.config.postgres) as conn:
        row = conn.execute(
            "SELECT pg_walfile_name(pg_switch_wal()), pg_walfile_name(pg_current_wal_lsn())"
        ).fetchone()
    assert row is not None
    return str(row[0])


def _current_wal(runtime: Runtime) -> str | None:
    """The WAL file PostgreSQL writes now (informational; None when it does not answer)."""
    try:
        with connect(runtime.config.postgres) as conn:
            row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    except (EbkError, psycopg.Error):
        return None
    return str(row[0]) if row else None


def _timeline_switches(keyring: WalKeyring, newest: int) -> list[tuple[int, int]]:
    """(timeline, LSN at which it ends) for the ancestors of ``newest``, oldest first."""
    if newest <= 1:
        return []
    try:
        history = fetch_authenticated(keyring, f"{newest:08X}.history")
    except ObjectNotFound:
        return []
    return parse_history(history.data.decode("utf-8", "replace"))


def _segment_size(keyring: WalKeyring, segments: list[str]) -> int:
    """wal_segment_size: the length of the newest archived segment that authenticates."""
    for name in reversed(segments):
        try:
            size = len(fetch_authenticated(keyring, name).data)
        except (IntegrityError, ObjectNotFound):
            continue
        if size and size & (size - 1) == 0:
            return size
    return DEFAULT_SEGMENT_SIZE


def _descendant(
    keyring: WalKeyring, start_tli: int, start_lsn: int, tlis: set[int]
) -> tuple[int, list[tuple[int, int]]]:
    """The newest timeline that continues the backup's (branched after its start), and the
    switch points on the way; a timeline that branched off before the backup is not its."""
    for tli in sorted((t for t in tlis if t > start_tli), reverse=True):
        switches = _timeline_switches(keyring, tli)
        if any(parent == start_tli and lsn >= start_lsn for parent, lsn in switches):
            return tli, switches
    return start_tli, []


def check_archive(runtime: Runtime, *, switch: bool = False, timeout: float = 60.0) -> CheckReport:
    report = CheckReport()
    keyring = WalKeyring(runtime)
    catalog = runtime.repository.list_backups()
    physical = [m for m in catalog.backups if m.kind == "physical" and m.start_lsn and m.timeline]
    if not physical:
        report.note = "no complete physical backup: the archive has no starting point"
        return report
    if switch:
        report.switched = _switch(runtime)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fetch_authenticated(keyring, report.switched)
                break
            except ObjectNotFound:
                if time.monotonic() > deadline:
                    raise IntegrityError(
                        f"{report.switched} was not archived within {timeout:.0f}s of "
                        "pg_switch_wal()",
                        hint="check archive_mode/archive_command and PostgreSQL's log",
                    ) from None
                time.sleep(0.5)
    oldest = physical[0]
    start_tli = int(oldest.timeline or 1)
    start_lsn = parse_lsn(oldest.start_lsn or "0/0")
    stored = list(keyring.store.files())
    segments = {w.name for w in stored if SEGMENT.match(w.name)}
    tlis = {int(w.name[:8], 16) for w in stored if SEGMENT.match(w.name) or HISTORY.match(w.name)}
    newest_tli, switches = _descendant(keyring, start_tli, start_lsn, tlis)
    chain = {newest_tli, *(tli for tli, _ in switches)}
    seg_size = _segment_size(keyring, sorted(segments))
    report.start = segment_name(start_tli, start_lsn, seg_size)
    start_no = start_lsn // seg_size
    end_no = max(
        (segment_number(n, seg_size) for n in segments if int(n[:8], 16) in chain),
        default=start_no,
    )

    def expected_tli(segno: int) -> int:
        for tli, end_lsn in switches:
            if tli >= start_tli and segno < end_lsn // seg_size:
                return tli
        return newest_tli

    expected = [name_of(expected_tli(s), s, seg_size) for s in range(start_no, end_no + 1)]
    report.end = expected[-1]
    report.current = _current_wal(runtime)
    report.timelines = sorted({int(n[:8], 16) for n in expected})
    present = [n for n in expected if n in segments]
    report.gaps = [n for n in expected if n not in segments]

    def authenticate(name: str) -> str | None:
        try:
            fetch_authenticated(keyring, name)
        except (IntegrityError, ObjectNotFound):
            return name
        return None

    with ThreadPoolExecutor(max_workers=CHECK_WORKERS) as pool:
        failed = [n for n in pool.map(authenticate, present) if n is not None]
    report.unauthenticated = failed
    report.checked = len(present) - len(failed)
    return report
