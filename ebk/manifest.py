"""The backup manifest: written last, so its presence means the backup is complete.

It lists every stored object with its SHA-256 and size, the cluster, LSNs and
key ids.  Its ``mac`` is HMAC-SHA-256 under a key derived from the backup's
DEK, so a restore detects a modified manifest once the DEK is unwrapped;
listing needs no key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ebk.errors import IntegrityError

FORMAT = "ebk-manifest"
VERSION = 1
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


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


@dataclass
class Manifest:
    backup_id: str
    kind: str  # physical | logical
    ebk_version: str
    format_version: int
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
    mac: str = ""

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

    def _body(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("mac")
        if body["source_size"] is None:
            # Optional field added in ebk 0.1: absent rather than null, so manifests
            # written before it keep their MAC.
            body.pop("source_size")
        body["format"] = FORMAT
        return body

    def _canonical(self) -> bytes:
        return json.dumps(self._body(), sort_keys=True, separators=(",", ":")).encode()

    def seal(self, dek: bytes) -> None:
        self.mac = hmac.new(_mac_key(dek), self._canonical(), hashlib.sha256).hexdigest()

    def verify(self, dek: bytes) -> None:
        expected = hmac.new(_mac_key(dek), self._canonical(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, self.mac):
            raise IntegrityError(
                f"manifest of backup {self.backup_id} failed authentication: it was modified "
                "or belongs to another backup",
                hint="the backup's metadata cannot be trusted; restore from another backup",
            )

    def to_json(self) -> bytes:
        doc = self._body()
        doc["mac"] = self.mac
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    def to_public(self) -> dict[str, Any]:
        """The manifest as shown by `ebk show --json` (mac omitted)."""
        doc = self._body()
        doc.pop("format")
        doc["stored_size"] = self.stored_size
        doc["plain_size"] = self.plain_size
        doc["size"] = self.size
        return doc

    @classmethod
    def from_json(cls, raw: bytes, *, where: str) -> Manifest:
        if len(raw) > MAX_MANIFEST_SIZE:
            raise IntegrityError(f"manifest {where} is implausibly large ({len(raw)} bytes)")
        try:
            doc = json.loads(raw)
            if doc.pop("format") != FORMAT or doc["format_version"] != VERSION:
                raise ValueError("unknown manifest format or version")
            doc["objects"] = [StoredObject(**o) for o in doc["objects"]]
            return cls(**doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"manifest {where} is malformed ({exc})") from None


def _mac_key(dek: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ebk/manifest/v1").derive(
        dek
    )
