"""The WAL archive in the repository: WAL objects and WAL key objects.

    wal/<timeline>/<file name>.ebk    one encrypted object per WAL file (ebk.format.walobject)
    wal/keys/<key id>.json            a WAL data key, wrapped by the KEK, signed by the writer

A WAL data key is used for many WAL files (it rotates by time and volume), so
archiving a segment costs no key-provider call.  Its key object is signed
with the repository's writer key (Ed25519 over RFC 8785 JSON, its own
signature domain) and its wrap context names the repository and the key id:
a key object copied from elsewhere, or written by someone without the writer
key, is never used.  WAL objects are only ever created (``put_if_absent``),
never overwritten; deletion (retention) happens under the repository lease.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ebk.errors import IntegrityError, KeyProviderError, ObjectNotFound, WrongKey
from ebk.format.walobject import MAX_WAL_FILE_SIZE, STREAM_PARTIAL, is_wal_name, timeline_of
from ebk.keys.base import KeyProvider, WrappedKey
from ebk.manifest import canonical
from ebk.repository.lease import RepositoryLease
from ebk.repository.writer import TrustedWriters, WriterKey

if TYPE_CHECKING:
    from ebk.repository import Repository

WAL = "wal/"
WAL_KEYS = "wal/keys/"
WAL_STREAM = "wal/stream/"  # partial segments of the streaming daemon (wal.mode = "stream")
MAX_WAL_KEY_SIZE = 64 * 1024
# A WAL object: the stream header, one tag per MiB chunk, the record and at most
# the WAL file itself (compression only shrinks it; zstd's worst case adds < 0.1 %).
MAX_WAL_OBJECT_SIZE = MAX_WAL_FILE_SIZE + MAX_WAL_FILE_SIZE // 512 + 64 * 1024
SIGNATURE_DOMAIN = b"ebk-wal-key-v1\x00"
PURPOSE = "ebk-wal-key"
KEY_ID = re.compile(r"^walk-\d{8}T\d{6}Z-[0-9a-f]{8}$")


def wal_object_name(name: str) -> str:
    return f"{WAL}{timeline_of(name)}/{name}.ebk"


def stream_partial_object(name: str) -> str:
    return f"{WAL_STREAM}{timeline_of(name)}/{name}.ebk"


def wal_key_context(repository_id: str, key_id: str) -> dict[str, str]:
    return {"purpose": PURPOSE, "repository_id": repository_id, "key_id": key_id}


@dataclass(frozen=True)
class WalKeyObject:
    """A verified WAL key object (only ``verify_wal_key`` makes one)."""

    key_id: str
    repository_id: str
    created: datetime
    slots: tuple[WrappedKey, ...]

    def unwrap(self, providers: Sequence[KeyProvider]) -> bytes:
        context = wal_key_context(self.repository_id, self.key_id)
        errors: list[KeyProviderError] = []
        for slot in self.slots:
            for provider in providers:
                if not provider.owns(slot):
                    continue
                try:
                    dek = provider.unwrap(slot, context)
                except KeyProviderError as exc:
                    errors.append(exc)
                    continue
                if not isinstance(dek, bytes) or len(dek) != 32:
                    raise WrongKey(f"WAL key {self.key_id} unwrapped to a key of wrong size")
                return dek
        if errors:
            raise errors[0]
        raise WrongKey(
            f"no configured key provider can unwrap WAL key {self.key_id}",
            hint="configure the KEK this repository was initialised with",
        )


def new_wal_key(
    providers: Sequence[KeyProvider], writer: WriterKey, *, repository_id: str, now: datetime
) -> tuple[bytes, str, bytes]:
    """A fresh WAL data key: (dek, key id, signed key object to store)."""
    dek = secrets.token_bytes(32)
    key_id = f"walk-{now:%Y%m%dT%H%M%S}Z-{secrets.token_hex(4)}"
    context = wal_key_context(repository_id, key_id)
    slots = [p.wrap(dek, context) for p in providers]
    return dek, key_id, signed_wal_key(writer, repository_id, key_id, now, slots)


def signed_wal_key(
    writer: WriterKey,
    repository_id: str,
    key_id: str,
    created: datetime,
    slots: Sequence[WrappedKey],
) -> bytes:
    """The WAL key object to store: new, or re-wrapped under a new KEK version (re-signed)."""
    doc: dict[str, object] = {
        "format": "ebk-wal-key",
        "version": 1,
        "repository_id": repository_id,
        "key_id": key_id,
        "created": created.astimezone(UTC).isoformat(timespec="seconds"),
        "slots": [
            {
                "provider": s.provider,
                "kek_id": s.kek_id,
                "wrapped": base64.b64encode(s.ciphertext).decode(),
            }
            for s in slots
        ],
    }
    doc["auth"] = {"sig": writer.sign(SIGNATURE_DOMAIN + canonical(doc))}
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def verify_wal_key(
    raw: bytes, trusted: TrustedWriters, *, repository_id: str, key_id: str
) -> WalKeyObject:
    """Parse (size-capped) and verify a WAL key object; IntegrityError unless authentic."""
    where = f"{WAL_KEYS}{key_id}.json"
    if len(raw) > MAX_WAL_KEY_SIZE:
        raise IntegrityError(f"WAL key object {where} is implausibly large ({len(raw)} bytes)")
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        auth = doc.pop("auth")
        sig = str(auth["sig"])
        covered = canonical(doc)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise IntegrityError(f"WAL key object {where} is malformed ({exc})") from None
    trusted.verify(SIGNATURE_DOMAIN + covered, sig, what=f"WAL key object {where}")
    try:
        if doc["format"] != "ebk-wal-key" or doc["version"] != 1:
            raise ValueError("unknown format or version")
        if doc["repository_id"] != repository_id or doc["key_id"] != key_id:
            raise ValueError("it names another repository or key id")
        created = datetime.fromisoformat(doc["created"])
        slots = tuple(
            WrappedKey(s["provider"], s["kek_id"], base64.b64decode(s["wrapped"], validate=True))
            for s in doc["slots"]
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"WAL key object {where} is not usable ({exc})") from None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return WalKeyObject(key_id, repository_id, created, slots)


@dataclass(frozen=True)
class StoredWal:
    """A listing entry: a WAL file name and its object's size (unauthenticated)."""

    name: str
    size: int


class WalStore:
    """Storage access for the WAL archive of one repository."""

    def __init__(self, repository: Repository) -> None:
        self._repo = repository
        self._storage = repository._storage

    @property
    def url(self) -> str:
        return self._repo.url

    def put(self, name: str, sealed: bytes) -> None:
        """Create the WAL object; ObjectExists when the name is taken (never overwrites)."""
        self._storage.put_if_absent(wal_object_name(name), sealed)

    def read(self, name: str) -> bytes:
        """The stored object (size-capped); ObjectNotFound when it is not archived."""
        return self._repo._read_capped(wal_object_name(name), MAX_WAL_OBJECT_SIZE)

    def files(self, timeline: str | None = None) -> Iterator[StoredWal]:
        """WAL files by name (names only: nothing here is authenticated)."""
        prefix = f"{WAL}{timeline}/" if timeline else WAL
        for info in self._storage.list(prefix):
            rest = info.name[len(WAL) :]
            tli, _, file = rest.partition("/")
            if tli == "keys" or not file.endswith(".ebk"):
                continue
            name = file.removesuffix(".ebk")
            if is_wal_name(name) and timeline_of(name) == tli:
                yield StoredWal(name, info.size)

    def delete(self, name: str, lease: RepositoryLease) -> None:
        lease.check()
        self._storage.delete(wal_object_name(name))

    # -- partial segments of the streaming daemon (docs/format.md, "Streamed partials") --

    def put_stream_partial(self, name: str, sealed: bytes) -> None:
        """Create ``<segment>.<end offset>.stream``; ObjectExists when taken."""
        self._storage.put_if_absent(stream_partial_object(name), sealed)

    def stream_partials(self, segment: str) -> list[str]:
        """Partial names stored for ``segment``, longest first (names only: unauthenticated)."""
        prefix = f"{WAL_STREAM}{segment[:8]}/{segment}."
        names = []
        for info in self._storage.list(prefix):
            name = info.name[len(WAL_STREAM) + 9 :].removesuffix(".ebk")
            match = STREAM_PARTIAL.match(name)
            if match and match.group(1) == segment and info.name.endswith(".ebk"):
                names.append(name)
        return sorted(names, reverse=True)

    def stream_files(self, timeline: str) -> list[str]:
        """Every partial name stored for ``timeline`` (names only: unauthenticated)."""
        prefix = f"{WAL_STREAM}{timeline}/"
        names = []
        for info in self._storage.list(prefix):
            name = info.name[len(prefix) :].removesuffix(".ebk")
            if STREAM_PARTIAL.match(name) and name[:8] == timeline and info.name.endswith(".ebk"):
                names.append(name)
        return sorted(names)

    def all_stream_partials(self) -> list[str]:
        """Every partial name stored, all timelines (names only: unauthenticated)."""
        names = []
        for info in self._storage.list(WAL_STREAM):
            tli, _, file = info.name[len(WAL_STREAM) :].partition("/")
            name = file.removesuffix(".ebk")
            if STREAM_PARTIAL.match(name) and name[:8] == tli and file.endswith(".ebk"):
                names.append(name)
        return sorted(names)

    def read_stream_partial(self, name: str) -> bytes:
        return self._repo._read_capped(stream_partial_object(name), MAX_WAL_OBJECT_SIZE)

    def delete_stream_partial(self, name: str, lease: RepositoryLease) -> None:
        lease.check()
        self._storage.delete(stream_partial_object(name))

    def key_ids(self) -> list[str]:
        """WAL key ids present (names only), oldest first."""
        ids = []
        for info in self._storage.list(WAL_KEYS):
            key_id = info.name[len(WAL_KEYS) :].removesuffix(".json")
            if KEY_ID.match(key_id) and info.name.endswith(".json"):
                ids.append(key_id)
        return sorted(ids)

    def read_key(self, key_id: str) -> bytes:
        if not KEY_ID.match(key_id):
            raise IntegrityError(f"{key_id!r} is not a WAL key id")
        try:
            return self._repo._read_capped(f"{WAL_KEYS}{key_id}.json", MAX_WAL_KEY_SIZE)
        except ObjectNotFound:
            raise IntegrityError(
                f"WAL key {key_id} is not in the repository; its WAL cannot be decrypted",
                hint="it was deleted, or the WAL object names a key this repository never had",
            ) from None

    def put_key(self, key_id: str, raw: bytes) -> None:
        self._storage.put_if_absent(f"{WAL_KEYS}{key_id}.json", raw)

    def replace_key(self, key_id: str, raw: bytes, lease: RepositoryLease) -> None:
        """A re-wrapped WAL key object (`ebk keys rewrap`) replaces the old one atomically."""
        if not KEY_ID.match(key_id):
            raise IntegrityError(f"{key_id!r} is not a WAL key id")
        lease.check()
        self._storage.put_bytes(f"{WAL_KEYS}{key_id}.json", raw)

    def verified_keys(self, trusted: TrustedWriters) -> Iterator[WalKeyObject | IntegrityError]:
        """Every WAL key object, verified (an unauthentic one comes back as its error)."""
        repository_id = str(self._repo.require_initialized().repository_id)
        for key_id in self.key_ids():
            try:
                raw = self.read_key(key_id)
                yield verify_wal_key(raw, trusted, repository_id=repository_id, key_id=key_id)
            except IntegrityError as exc:
                yield exc


def wal_store(repository: Repository) -> WalStore:
    return WalStore(repository)
