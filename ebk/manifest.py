"""The backup manifest: written last, so its presence means the backup is complete.

It lists every stored object with its SHA-256 and size, the cluster, LSNs and
key ids.  Version 2 (this writer) is authenticated over the RFC 8785 (JCS)
canonical form of the stored document without its ``auth`` member, so the
authenticator covers exactly what was stored, unknown members included: a
newer ebk can add members and an older one still verifies and keeps them.
``auth`` holds the authenticators (today an HMAC under a key derived from the
backup's DEK; a writer signature joins it beside the MAC).

Version 1 manifests (ebk 0.1) are still read: their MAC covers ebk 0.1's own
re-serialised model (docs/format.md, "Manifest version 1").
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ebk.errors import IntegrityError

if TYPE_CHECKING:
    from ebk.repository.writer import TrustedWriters, WriterKey

FORMAT = "ebk-manifest"
VERSION = 2
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
ROLES = ("base", "tablespace", "backup_manifest", "dump", "globals")
KINDS = ("physical", "logical")


@dataclass
class StoredObject:
    name: str
    role: str  # base | tablespace | backup_manifest | dump | globals
    plain_size: int
    stored_size: int
    sha256: str
    tablespace_oid: str | None = None
    tablespace_location: str | None = None
    database: str | None = None


_OBJECT_OPTIONAL = ("tablespace_oid", "tablespace_location", "database")


@dataclass
class Manifest:
    backup_id: str
    kind: str  # physical | logical
    ebk_version: str
    system_identifier: str
    server_version: str
    start_time: str
    stop_time: str
    dek_id: str
    key_slots: list[str]
    objects: list[StoredObject] = field(default_factory=list)
    start_lsn: str | None = None
    stop_lsn: str | None = None
    timeline: int | None = None
    databases: list[str] = field(default_factory=list)
    # Physical: bytes of database files (from PostgreSQL's backup_manifest); the
    # objects' plain_size may be smaller when PostgreSQL compressed the archives.
    source_size: int | None = None
    server_version_num: int | None = None
    stream_version: int = 1  # the version of docs/format.md's stream every object uses
    parent: str | None = None  # the backup an incremental backup builds on
    # Incremental only: the full backup the chain starts from, and this backup's
    # distance from it (1 for the first incremental); see ebk/chain.py.
    chain_root: str | None = None
    chain_depth: int | None = None
    manifest_version: int = VERSION
    # Members this ebk does not know: kept, authenticated, written back unchanged.
    extensions: dict[str, Any] = field(default_factory=dict)
    auth: dict[str, str] = field(default_factory=dict)

    @property
    def incremental(self) -> bool:
        """A physical backup that holds only what changed since ``parent``."""
        return self.parent is not None

    @property
    def stored_size(self) -> int:
        return sum(o.stored_size for o in self.objects)

    @property
    def size(self) -> int:
        """The size an operator means: database files, else the payload before encryption."""
        return self.source_size if self.source_size is not None else self.plain_size

    @property
    def plain_size(self) -> int:
        return sum(o.plain_size for o in self.objects)

    @property
    def major(self) -> int:
        if self.server_version_num:
            return self.server_version_num // 10000
        digits = re.match(r"\d+", self.server_version)
        if digits is None:
            raise IntegrityError(f"manifest of backup {self.backup_id}: no server version")
        return int(digits.group())

    # -- encoding ---------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        """The stored document without ``auth``; what the authenticators cover."""
        if self.manifest_version == 1:
            return _v1_body(self)
        doc: dict[str, Any] = dict(self.extensions)
        doc.update(
            format=FORMAT,
            manifest_version=self.manifest_version,
            stream_version=self.stream_version,
            backup_id=self.backup_id,
            kind=self.kind,
            ebk_version=self.ebk_version,
            system_identifier=self.system_identifier,
            server_version=self.server_version,
            start_time=self.start_time,
            stop_time=self.stop_time,
            dek_id=self.dek_id,
            key_slots=list(self.key_slots),
            databases=list(self.databases),
            objects=[_object_doc(o) for o in self.objects],
        )
        for name in ("start_lsn", "stop_lsn", "timeline", "source_size", "server_version_num"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        if self.parent is not None:
            doc["parent"] = self.parent
        for name in ("chain_root", "chain_depth"):
            if getattr(self, name) is not None:
                doc[name] = getattr(self, name)
        return doc

    def authenticated_bytes(self) -> bytes:
        if self.manifest_version == 1:
            return json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode()
        return canonical(self.body())

    def seal(self, dek: bytes) -> None:
        if self.manifest_version != VERSION:
            raise ValueError("only the current manifest version is written")
        self.auth = {"mac": _mac(dek, self.authenticated_bytes(), VERSION)}

    def verify(self, dek: bytes) -> None:
        mac = self.auth.get("mac", "")
        try:
            covered = self.authenticated_bytes()
        except ValueError as exc:
            raise IntegrityError(
                f"manifest of backup {self.backup_id} is malformed ({exc})"
            ) from None
        expected = _mac(dek, covered, self.manifest_version)
        if not hmac.compare_digest(expected.encode(), mac.encode()):
            raise IntegrityError(
                f"manifest of backup {self.backup_id} failed authentication: it was modified "
                "or belongs to another backup",
                hint="the backup's metadata cannot be trusted; restore from another backup",
            )

    def upgraded(self) -> Manifest:
        """This manifest as the current version, unauthenticated (seal and sign it next)."""
        return dataclasses.replace(self, manifest_version=VERSION, stream_version=1, auth={})

    def sign(self, writer: WriterKey) -> None:
        """Add the writer signature (after ``seal``: the MAC and the signature cover the same)."""
        self.auth["sig"] = writer.sign(self.authenticated_bytes())

    def verify_signature(self, trusted: TrustedWriters) -> None:
        """The repository's writer signed exactly this document; else IntegrityError."""
        what = f"manifest of backup {self.backup_id}"
        if self.manifest_version == 1:
            raise IntegrityError(
                f"{what} was written by ebk 0.1 and carries no writer signature",
                hint="`ebk repo migrate` re-signs it (after authenticating it with the KEK); "
                "until then it restores only when named by id, with the KEK",
            )
        if "sig" not in self.auth:
            raise IntegrityError(
                f"{what} carries no writer signature",
                hint="it was not written by the ebk that owns this repository",
            )
        try:
            covered = self.authenticated_bytes()
        except ValueError as exc:
            raise IntegrityError(f"{what} is malformed ({exc})") from None
        trusted.verify(covered, self.auth["sig"], what=what)

    def to_json(self) -> bytes:
        doc = self.body()
        if self.manifest_version == 1:
            doc["mac"] = self.auth.get("mac", "")
        else:
            doc["auth"] = dict(self.auth)
        return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"

    def to_public(self) -> dict[str, Any]:
        """The manifest as shown by `ebk show --json` (authenticators omitted)."""
        doc = self.body()
        doc.pop("format", None)
        doc.setdefault("start_lsn", None)
        doc.setdefault("stop_lsn", None)
        doc.setdefault("timeline", None)
        doc["stored_size"] = self.stored_size
        doc["plain_size"] = self.plain_size
        doc["size"] = self.size
        if self.kind == "physical":
            doc["backup_type"] = "incremental" if self.incremental else "full"
        return doc

    @classmethod
    def from_json(cls, raw: bytes, *, where: str) -> Manifest:
        """Parse (not authenticate) a stored manifest; every member is type-checked."""
        if len(raw) > MAX_MANIFEST_SIZE:
            raise IntegrityError(f"manifest {where} is implausibly large ({len(raw)} bytes)")
        try:
            doc = json.loads(raw, object_pairs_hook=_no_duplicates)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError("not an ebk manifest")
            if "manifest_version" in doc:
                return _parse_v2(doc)
            if doc.get("format_version") == 1:
                return _parse_v1(doc)
            raise ValueError("unknown manifest version")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise IntegrityError(
                f"manifest {where} is malformed ({exc})",
                hint="it was damaged or not written by ebk; `ebk repo check` lists it",
            ) from None


def canonical(doc: dict[str, Any]) -> bytes:
    """RFC 8785 JSON Canonicalization: the bytes every authenticator covers."""
    try:
        return rfc8785.dumps(doc)
    except (rfc8785.CanonicalizationError, ValueError) as exc:
        raise ValueError(f"cannot be canonicalised: {exc}") from None


def _mac(dek: bytes, data: bytes, version: int) -> str:
    info = b"ebk/manifest/v1" if version == 1 else b"ebk/manifest/v2"
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(dek)
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate member {key!r}")
        doc[key] = value
    return doc


def _object_doc(o: StoredObject) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": o.name,
        "role": o.role,
        "plain_size": o.plain_size,
        "stored_size": o.stored_size,
        "sha256": o.sha256,
    }
    for name in _OBJECT_OPTIONAL:
        value = getattr(o, name)
        if value is not None:
            doc[name] = value
    return doc


# -- typed reading of untrusted documents -----------------------------------------------


def _take(doc: dict[str, Any], name: str, check: Callable[[Any], bool], what: str) -> Any:
    if name not in doc:
        raise ValueError(f"missing member {name!r}")
    value = doc.pop(name)
    if not check(value):
        raise ValueError(f"{name} must be {what}")
    return value


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 4096


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= 100_000 and all(_is_str(s) for s in v)


def _parse_object(raw: Any) -> StoredObject:
    if not isinstance(raw, dict):
        raise ValueError("objects[] entries must be objects")
    doc = dict(raw)
    obj = StoredObject(
        name=_take(doc, "name", _is_str, "a string"),
        role=_take(doc, "role", lambda v: v in ROLES, f"one of {', '.join(ROLES)}"),
        plain_size=_take(doc, "plain_size", _is_int, "a size"),
        stored_size=_take(doc, "stored_size", _is_int, "a size"),
        sha256=_take(
            doc,
            "sha256",
            lambda v: isinstance(v, str) and len(v) == 64 and v == v.lower() and _hex(v),
            "64 lower-case hex digits",
        ),
        **{
            name: _take(doc, name, _opt(_is_str), "a string")
            for name in _OBJECT_OPTIONAL
            if name in doc
        },
    )
    if doc:
        raise ValueError(f"unknown object member(s) {', '.join(sorted(doc))}")
    return obj


def _hex(v: str) -> bool:
    try:
        bytes.fromhex(v)
    except ValueError:
        return False
    return True


def _common(doc: dict[str, Any]) -> dict[str, Any]:
    objects = _take(doc, "objects", lambda v: isinstance(v, list) and len(v) <= 100_000, "a list")
    return {
        "backup_id": _take(doc, "backup_id", _is_str, "a string"),
        "kind": _take(doc, "kind", lambda v: v in KINDS, "physical or logical"),
        "ebk_version": _take(doc, "ebk_version", _is_str, "a string"),
        "system_identifier": _take(doc, "system_identifier", _is_str, "a string"),
        "server_version": _take(doc, "server_version", _is_str, "a string"),
        "start_time": _take(doc, "start_time", _is_str, "a string"),
        "stop_time": _take(doc, "stop_time", _is_str, "a string"),
        "dek_id": _take(doc, "dek_id", _is_str, "a string"),
        "key_slots": _take(doc, "key_slots", _str_list, "a list of strings"),
        "objects": [_parse_object(o) for o in objects],
        "databases": _take(doc, "databases", _str_list, "a list of strings"),
    }


def _optional(doc: dict[str, Any], name: str, check: Callable[[Any], bool], what: str) -> Any:
    return _take(doc, name, _opt(check), what) if name in doc else None


def _parse_v2(doc: dict[str, Any]) -> Manifest:
    doc.pop("format")
    version = _take(doc, "manifest_version", _is_int, "an integer")
    if version != VERSION:
        raise ValueError(f"manifest version {version} is newer than this ebk reads ({VERSION})")
    auth = _take(
        doc,
        "auth",
        lambda v: isinstance(v, dict) and all(_is_str(x) for x in v.values()),
        "an object of strings",
    )
    stream_version = _take(doc, "stream_version", _is_int, "an integer")
    fields = _common(doc)
    manifest = Manifest(
        **fields,
        start_lsn=_optional(doc, "start_lsn", _is_str, "a string"),
        stop_lsn=_optional(doc, "stop_lsn", _is_str, "a string"),
        timeline=_optional(doc, "timeline", _is_int, "an integer"),
        source_size=_optional(doc, "source_size", _is_int, "a size"),
        server_version_num=_optional(doc, "server_version_num", _is_int, "an integer"),
        parent=_optional(doc, "parent", _is_str, "a backup id"),
        chain_root=_optional(doc, "chain_root", _is_str, "a backup id"),
        chain_depth=_optional(doc, "chain_depth", _is_int, "an integer"),
        stream_version=stream_version,
        manifest_version=version,
        extensions=doc,
        auth=dict(auth),
    )
    canonical(manifest.extensions)  # unknown members must have a canonical form too
    return manifest


# -- version 1 (ebk 0.1): read only ------------------------------------------------------

_V1_MEMBERS = {
    "backup_id", "kind", "ebk_version", "format_version", "system_identifier", "server_version",
    "start_time", "stop_time", "dek_id", "key_slots", "objects", "start_lsn", "stop_lsn",
    "timeline", "databases", "source_size", "mac",
}  # fmt: skip


def _parse_v1(doc: dict[str, Any]) -> Manifest:
    doc.pop("format")
    unknown = set(doc) - _V1_MEMBERS
    if unknown:
        raise ValueError(f"unknown member(s) {', '.join(sorted(unknown))}")
    doc.pop("format_version")
    mac = _take(doc, "mac", _is_str, "a string")
    fields = _common(doc)
    return Manifest(
        **fields,
        start_lsn=_take(doc, "start_lsn", _opt(_is_str), "a string"),
        stop_lsn=_take(doc, "stop_lsn", _opt(_is_str), "a string"),
        timeline=_take(doc, "timeline", _opt(_is_int), "an integer"),
        source_size=_optional(doc, "source_size", _is_int, "a size"),
        manifest_version=1,
        auth={"mac": mac},
    )


def _v1_body(m: Manifest) -> dict[str, Any]:
    """ebk 0.1's MAC input: its model, with source_size omitted when unknown."""
    body: dict[str, Any] = {
        "format": FORMAT,
        "format_version": 1,
        "backup_id": m.backup_id,
        "kind": m.kind,
        "ebk_version": m.ebk_version,
        "system_identifier": m.system_identifier,
        "server_version": m.server_version,
        "start_time": m.start_time,
        "stop_time": m.stop_time,
        "dek_id": m.dek_id,
        "key_slots": list(m.key_slots),
        "objects": [
            {
                "name": o.name,
                "role": o.role,
                "plain_size": o.plain_size,
                "stored_size": o.stored_size,
                "sha256": o.sha256,
                "tablespace_oid": o.tablespace_oid,
                "tablespace_location": o.tablespace_location,
                "database": o.database,
            }
            for o in m.objects
        ],
        "start_lsn": m.start_lsn,
        "stop_lsn": m.stop_lsn,
        "timeline": m.timeline,
        "databases": list(m.databases),
    }
    if m.source_size is not None:
        body["source_size"] = m.source_size
    return body
