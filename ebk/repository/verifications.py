"""Verification records: what `ebk verify` proved about a backup, signed like manifests.

    backups/<id>/verifications/<verified_at>-<rand>.json

A record sits under its backup's prefix, so deleting the backup deletes its
records.  It is a JSON document signed by the repository's writer key over
``b"ebk-verification-v1\\0" || JCS(record without auth)`` (the domain string
keeps a record from ever verifying as a manifest, whose covered bytes start
with ``{``).  Readers cap the size before parsing and use a record only after
its signature verifies and it names the backup it is stored under; anything
else is skipped and reported, never shown as VERIFIED.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ebk.errors import IntegrityError, ObjectNotFound
from ebk.manifest import canonical
from ebk.repository.layout import BACKUPS, object_name
from ebk.repository.writer import TrustedWriters, WriterKey
from ebk.storage.base import ObjectInfo, Storage

FORMAT = "ebk-verification"
VERSION = 1
DOMAIN = b"ebk-verification-v1\x00"
PREFIX = "verifications/"
MAX_RECORD_SIZE = 256 * 1024
MAX_DETAIL = 4000  # characters per check's details
MAX_CHECKS = 64
MAX_RECORDS_READ = 20  # authentic records per backup: the newest ones (names sort by time)
# Objects read per backup at most: unauthentic ones do not count against MAX_RECORDS_READ
# (a bucket writer must not push genuine records out of view with forged newer names),
# but a flood of them is bounded and reported.
MAX_OBJECTS_READ = 1000
LEVELS = ("integrity", "restore")
OUTCOMES = ("pass", "fail", "warn", "skipped", "incomplete")


@dataclass
class CheckResult:
    name: str  # e.g. "chunks", "pg_verifybackup", "pg_amcheck", "fingerprints"
    outcome: str  # pass | fail | warn | skipped | incomplete
    details: str = ""
    duration_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "details": self.details[:MAX_DETAIL],
            "duration_seconds": round(self.duration_seconds, 3),
        }


@dataclass
class VerificationRecord:
    backup_id: str
    level: str
    verified_at: str
    duration_seconds: float
    ebk_version: str
    server_version: str | None
    checks: list[CheckResult] = field(default_factory=list)
    signer: str = ""  # key id of the writer key that signed it (set when read)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(
            c.outcome in ("pass", "warn", "skipped") for c in self.checks
        )

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "backup_id": self.backup_id,
            "level": self.level,
            "passed": self.passed,
            "verified_at": self.verified_at,
            "duration_seconds": round(self.duration_seconds, 3),
            "ebk_version": self.ebk_version,
            "server_version": self.server_version,
            "checks": [c.to_json() for c in self.checks[:MAX_CHECKS]],
        }

    def to_public(self) -> dict[str, Any]:
        return {**self.body(), "signed_by": self.signer}


@dataclass
class Latest:
    """What listings need of a backup's records (all authenticated)."""

    newest: VerificationRecord | None = None  # passed or not
    passed: VerificationRecord | None = None  # the newest passing, any level
    restore: VerificationRecord | None = None  # the newest passing restore verification


def _covered(body: dict[str, Any]) -> bytes:
    return DOMAIN + canonical(body)


def _parse(raw: bytes, where: str) -> tuple[VerificationRecord, dict[str, Any], str]:
    """Parse (not authenticate): the record, the covered body and the signature."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not a verification record")
        if doc.get("version") != VERSION:
            raise ValueError("unknown version")
        auth = doc.pop("auth")
        sig = auth["sig"] if isinstance(auth, dict) else None
        if not isinstance(sig, str):
            raise ValueError("no signature")
        checks_raw = doc["checks"]
        if not isinstance(checks_raw, list) or len(checks_raw) > MAX_CHECKS:
            raise ValueError("checks must be a short list")
        checks = []
        for c in checks_raw:
            if not isinstance(c, dict) or c.get("outcome") not in OUTCOMES:
                raise ValueError("malformed check")
            checks.append(
                CheckResult(
                    str(c["name"])[:64],
                    str(c["outcome"]),
                    str(c.get("details", ""))[:MAX_DETAIL],
                    float(c.get("duration_seconds", 0.0)),
                )
            )
        level = doc["level"]
        if level not in LEVELS:
            raise ValueError("unknown level")
        record = VerificationRecord(
            backup_id=str(doc["backup_id"]),
            level=str(level),
            verified_at=str(doc["verified_at"]),
            duration_seconds=float(doc["duration_seconds"]),
            ebk_version=str(doc["ebk_version"]),
            server_version=None
            if doc.get("server_version") is None
            else str(doc["server_version"]),
            checks=checks,
        )
        datetime.fromisoformat(record.verified_at)
        if doc.get("passed") is not record.passed:
            raise ValueError("passed does not match the checks")
        canonical(doc)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise IntegrityError(f"verification record {where} is malformed ({exc})") from None
    return record, doc, sig


class VerificationStore:
    """Reads and writes the records of one repository (created by Repository.verifications)."""

    def __init__(self, storage: Storage, trusted: Callable[[], TrustedWriters], url: str) -> None:
        self._storage = storage
        self._trusted = trusted
        self._url = url
        self._parallel = not url.startswith("file:")

    def _prefix(self, backup_id: str) -> str:
        return object_name(backup_id, PREFIX)

    def write(self, record: VerificationRecord, writer: WriterKey) -> str:
        body = record.body()
        raw = _covered(body)
        doc = {**body, "auth": {"sig": writer.sign(raw)}}
        data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
        if len(data) > MAX_RECORD_SIZE:
            raise IntegrityError("verification record too large; details were not truncated")
        stamp = datetime.fromisoformat(record.verified_at).astimezone(UTC)
        name = f"{self._prefix(record.backup_id)}{stamp:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(3)}"
        name += ".json"
        self._storage.put_if_absent(name, data)
        record.signer = writer.key_id
        return name

    def _read_capped(self, name: str) -> bytes:
        parts: list[bytes] = []
        size = 0
        with self._storage.open_read(name) as stream:
            while size <= MAX_RECORD_SIZE and (part := stream.read(64 * 1024)):
                parts.append(part)
                size += len(part)
        raw = b"".join(parts)
        if len(raw) > MAX_RECORD_SIZE:
            raise IntegrityError(f"{name} is larger than any verification record")
        return raw

    def _read(
        self, info: ObjectInfo, backup_id: str, problems: list[str] | None
    ) -> VerificationRecord | None:
        """One record, authenticated; None (and a problem) when it is not authentic."""
        if info.size > MAX_RECORD_SIZE:
            if problems is not None:
                problems.append(f"{info.name}: implausibly large ({info.size} B)")
            return None
        try:
            record, body, sig = _parse(self._read_capped(info.name), info.name)
            self._trusted().verify(_covered(body), sig, what=f"verification record {info.name}")
            if record.backup_id != backup_id:
                raise IntegrityError(
                    f"verification record {info.name} describes backup {record.backup_id}"
                )
        except ObjectNotFound:
            return None
        except IntegrityError as exc:
            if problems is not None:
                problems.append(exc.message)
            return None
        record.signer = sig.split(":")[1] if sig.count(":") >= 2 else ""
        return record

    def _names(self, prefix: str) -> dict[str, list[ObjectInfo]]:
        """Record objects under ``prefix`` by backup id, oldest first (names sort by time)."""
        out: dict[str, list[ObjectInfo]] = {}
        for info in self._storage.list(prefix):
            rest = info.name[len(BACKUPS) :]
            backup_id, _, tail = rest.partition("/")
            folder, _, leaf = tail.partition("/")
            if folder + "/" == PREFIX and leaf.endswith(".json") and "/" not in leaf:
                out.setdefault(backup_id, []).append(info)
        for infos in out.values():
            infos.sort(key=lambda i: i.name)
        return out

    def records(
        self, backup_id: str, problems: list[str] | None = None
    ) -> list[VerificationRecord]:
        """The authentic records of a backup, oldest first; the rest go to ``problems``."""
        infos = self._names(self._prefix(backup_id)).get(backup_id, [])
        out: list[VerificationRecord] = []
        for record in self._newest_first(infos, backup_id, problems):
            out.append(record)
            if len(out) == MAX_RECORDS_READ:
                break
        return out[::-1]

    def _newest_first(
        self, infos: list[ObjectInfo], backup_id: str, problems: list[str] | None
    ) -> Iterable[VerificationRecord]:
        """Authentic records, newest first; unauthentic ones are reported and skipped."""
        for read, info in enumerate(reversed(infos)):
            if read == MAX_OBJECTS_READ:
                if problems is not None:
                    problems.append(
                        f"backup {backup_id}: more than {MAX_OBJECTS_READ} verification record "
                        "objects; the older ones were not read"
                    )
                return
            record = self._read(info, backup_id, problems)
            if record is not None:
                yield record

    def latest(
        self, backup_ids: Iterable[str], problems: list[str] | None = None
    ) -> dict[str, Latest]:
        """The newest record, newest passing one and newest passing restore per backup.

        One listing for all backups; reads newest first and stops once a passing
        restore record is found (a backup verified by its latest run costs one
        read); concurrent reads on object stores.
        """
        wanted = set(backup_ids)
        names = {k: v for k, v in self._names(BACKUPS).items() if k in wanted}

        def scan(item: tuple[str, list[ObjectInfo]]) -> tuple[str, Latest, list[str]]:
            backup_id, infos = item
            found: list[str] = []
            state = Latest()
            for authentic, record in enumerate(self._newest_first(infos, backup_id, found)):
                if authentic == MAX_RECORDS_READ:
                    break
                state.newest = state.newest or record
                if record.passed:
                    state.passed = state.passed or record
                    if record.level == "restore":
                        state.restore = record
                        break
            return backup_id, state, found

        if self._parallel:
            with ThreadPoolExecutor(max_workers=16) as pool:
                scanned = list(pool.map(scan, names.items()))
        else:
            scanned = [scan(item) for item in names.items()]
        out = {b: Latest() for b in wanted}
        for backup_id, state, found in scanned:
            out[backup_id] = state
            if problems is not None:
                problems.extend(found)
        return out
