"""Where things live in a repository, and the names that bind objects to their place.

    ebk-repository.json           marker: format, layout version, repository id
    manifests/<id>.json           written last: its presence makes backup <id> complete
    backups/<id>/key.json         the wrapped data key (rewritten by KEK rotation)
    backups/<id>/<name>.ebk       encrypted payload objects
    locks/delete.json             the deletion lease
    keyevents/<event>.json        signed key events (ebk/repository/keyevents.py)
    shredded/<id>                 tombstone of a delete in progress (ebk/repository/shred.py)

Listing the complete backups reads one flat prefix (``manifests/``), and
everything one backup owns sits under its own prefix, so resolving, listing
and deleting a backup never walks the rest of the repository.  Layout 1
(ebk 0.1) kept the manifest at ``backups/<id>/manifest.json``; such
repositories are still read, and `ebk repo migrate` moves them to layout 2.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

MARKER = "ebk-repository.json"
LAYOUT_VERSION = 2
BACKUPS = "backups/"
MANIFESTS = "manifests/"
KEY_OBJECT = "key.json"
LEGACY_MANIFEST = "manifest.json"
LEASE_OBJECT = "locks/delete.json"

BACKUP_ID = re.compile(r"^\d{8}T\d{6}(?:\d{6})?Z-[0-9a-f]{6}$")
_ID_TIME = re.compile(r"^(\d{8}T\d{6})(\d{6})?Z")


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable by time to the microsecond, unique across hosts: 20261128T142301123456Z-3fa9c1."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(3)}"


def is_backup_id(text: str) -> bool:
    """Ids of both generations: 20261128T142301Z-3fa9c1 (0.1) and with microseconds."""
    return bool(BACKUP_ID.match(text))


def backup_id_time(backup_id: str) -> datetime | None:
    """The start time a backup id claims (unauthenticated: for ordering leftovers only)."""
    match = _ID_TIME.match(backup_id)
    if not match:
        return None
    when = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return when.replace(microsecond=int(match.group(2) or 0))


def object_name(backup_id: str, name: str) -> str:
    return f"{BACKUPS}{backup_id}/{name}"


def manifest_name(backup_id: str) -> str:
    return f"{MANIFESTS}{backup_id}.json"


def legacy_manifest_name(backup_id: str) -> str:
    return object_name(backup_id, LEGACY_MANIFEST)


def stream_context(backup_id: str, name: str) -> bytes:
    """Associated data of an object's stream: moving it elsewhere breaks authentication."""
    return f"ebk/{backup_id}/{name}".encode()
