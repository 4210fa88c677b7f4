"""The key-event log: an append-only, signed audit trail of what happened to the keys.

One object per event, ``keyevents/<time>-<random>.json``, written with
create-if-absent (an event is never overwritten), signed by the repository's
writer key (ebk/repository/writer.py) over RFC 8785 JSON:

    {"format": "ebk-key-event", "version": 1, "event_id": ..., "kind": ...,
     "time": "<iso8601>", "host": ..., "user": ..., "details": {...},
     "auth": {"sig": "ed25519:<key id>:<base64>"}}

The signature covers ``b"ebk-key-event-v1\\0" + JCS(document without auth)``,
so no event verifies as a manifest or the other way round.  Kinds: rotate,
rewrap, retire, shred, restore-with-recovery-key.  Details name versions,
counts and backup ids, never key material.  Reading caps each object before
parsing and verifies before listing: an object that does not verify is
reported as unauthenticated and never shown as an event.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ebk.errors import IntegrityError, ObjectExists, ObjectNotFound
from ebk.identity import process_identity
from ebk.manifest import canonical
from ebk.repository.writer import TrustedWriters, WriterKey
from ebk.storage.base import Storage

KEY_EVENTS = "keyevents/"
MAX_KEY_EVENT_SIZE = 16 * 1024
KINDS = ("rotate", "rewrap", "retire", "shred", "restore-with-recovery-key")
DOMAIN = b"ebk-key-event-v1\x00"


@dataclass(frozen=True)
class KeyEvent:
    event_id: str
    kind: str
    time: str
    host: str
    user: str
    details: dict[str, Any]

    def document(self) -> dict[str, Any]:
        return {
            "format": "ebk-key-event",
            "version": 1,
            "event_id": self.event_id,
            "kind": self.kind,
            "time": self.time,
            "host": self.host,
            "user": self.user,
            "details": self.details,
        }


@dataclass
class EventListing:
    events: list[KeyEvent] = field(default_factory=list)
    unauthenticated: list[tuple[str, str]] = field(default_factory=list)  # (object, why)


class KeyEventLog:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def append(self, kind: str, details: dict[str, Any], writer: WriterKey) -> KeyEvent:
        if kind not in KINDS:
            raise ValueError(f"unknown key event kind {kind!r}")
        now = datetime.now(UTC)
        user, host, _ = process_identity()
        event = KeyEvent(
            f"{now:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}",
            kind,
            now.isoformat(timespec="seconds"),
            host,
            user,
            details,
        )
        doc = event.document()
        doc["auth"] = {"sig": writer.sign(DOMAIN + canonical(event.document()))}
        raw = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
        if len(raw) > MAX_KEY_EVENT_SIZE:
            raise ValueError(f"key event {kind} is too large ({len(raw)} bytes)")
        try:
            self._storage.put_if_absent(f"{KEY_EVENTS}{event.event_id}.json", raw)
        except ObjectExists:  # a random suffix collided: never overwrite, take another
            return self.append(kind, details, writer)
        return event

    def read(self, trusted: TrustedWriters) -> EventListing:
        """Every event that verifies, oldest first; the rest as unauthenticated."""
        listing = EventListing()
        for info in self._storage.list(KEY_EVENTS):
            name = info.name
            if info.size > MAX_KEY_EVENT_SIZE:
                listing.unauthenticated.append((name, f"implausibly large ({info.size} B)"))
                continue
            try:
                raw = self._storage.get_bytes(name)
            except ObjectNotFound:
                continue
            try:
                listing.events.append(_verified(raw, name, trusted))
            except IntegrityError as exc:
                listing.unauthenticated.append((name, exc.message))
        listing.events.sort(key=lambda e: e.event_id)
        return listing


def _verified(raw: bytes, name: str, trusted: TrustedWriters) -> KeyEvent:
    if len(raw) > MAX_KEY_EVENT_SIZE:
        raise IntegrityError(f"{name} is implausibly large")
    try:
        doc = json.loads(raw)
        if doc.get("format") != "ebk-key-event" or doc.get("version") != 1:
            raise ValueError("not an ebk key event")
        sig = str(doc["auth"]["sig"])
        event = KeyEvent(
            str(doc["event_id"]),
            str(doc["kind"]),
            str(doc["time"]),
            str(doc["host"]),
            str(doc["user"]),
            dict(doc["details"]),
        )
        covered = canonical(event.document())
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise IntegrityError(f"{name} is malformed ({exc})") from None
    trusted.verify(DOMAIN + covered, sig, what=f"key event {name}")
    if name.rsplit("/", 1)[-1] != f"{event.event_id}.json" or event.kind not in KINDS:
        raise IntegrityError(f"{name}: its name or kind does not match what was signed")
    return event
