"""A local cache of manifests fetched from an object store.

Listing 10,000 backups on S3 costs ten list calls but 10,000 GETs; with the
cache, a GET happens only for a manifest not seen before.  An entry is keyed by
the object's name, size and the store's modification time, so a replaced
object misses.  The cache is an optimisation, never a source of trust: its
bytes are parsed and authenticated exactly like bytes fetched from the store,
and an unreadable entry is simply fetched again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

from ebk.storage.base import ObjectInfo


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ebk"


class ManifestCache:
    def __init__(self, root: Path, repository_url: str) -> None:
        self._dir = root / hashlib.sha256(repository_url.encode()).hexdigest()[:24] / "manifests"

    @staticmethod
    def _entry(info: ObjectInfo) -> str:
        stamp = (
            int(info.modified.timestamp() * 1_000_000) if isinstance(info.modified, datetime) else 0
        )
        return f"{Path(info.name).name}.{info.size}.{stamp}"

    def get(self, info: ObjectInfo) -> bytes | None:
        if info.modified is None:
            return None
        try:
            raw = (self._dir / self._entry(info)).read_bytes()
        except OSError:
            return None
        return raw if len(raw) == info.size else None

    def put(self, info: ObjectInfo, raw: bytes) -> None:
        if info.modified is None or len(raw) != info.size:
            return
        with contextlib.suppress(OSError):  # a cache that cannot be written is no cache
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self._dir / f".tmp-{os.getpid()}-{self._entry(info)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, self._dir / self._entry(info))

    def keep_only(self, listed: list[ObjectInfo]) -> None:
        """Forget entries of manifests that are gone or changed."""
        wanted = {self._entry(i) for i in listed}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._dir):
                if entry.name not in wanted:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


class VerifiedDigests:
    """SHA-256 digests of manifest bytes whose writer signature verified on this host.

    Verifying an Ed25519 signature costs ~0.2 ms here; listing 10,000 backups
    would spend seconds re-proving what this host already proved.  An entry
    names the exact bytes (so any change misses) and the reader still checks
    that the signing key is one it trusts now.  Like the manifest cache, it
    lives on the ebk host and trusts that host's disk as much as its config.
    """

    def __init__(self, root: Path, repository_url: str) -> None:
        self._path = root / hashlib.sha256(repository_url.encode()).hexdigest()[:24] / "verified"
        self._known: set[bytes] = set()
        self._seen: set[bytes] = set()
        with contextlib.suppress(OSError):
            data = self._path.read_bytes()
            self._known = {data[i : i + 32] for i in range(0, len(data) - len(data) % 32, 32)}

    @staticmethod
    def digest(raw: bytes) -> bytes:
        return hashlib.sha256(raw).digest()

    def __contains__(self, digest: bytes) -> bool:
        self._seen.add(digest)
        return digest in self._known

    def add(self, digest: bytes) -> None:
        self._known.add(digest)
        self._seen.add(digest)

    def save(self) -> None:
        """Keep only what this listing saw (bounded by the repository's size)."""
        keep = self._known & self._seen
        with contextlib.suppress(OSError):
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self._path.with_name(f".tmp-{os.getpid()}-verified")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(b"".join(sorted(keep)))
            os.replace(tmp, self._path)


class HighWaterMark:
    """The newest authenticated backup this host has seen in the repository.

    A bucket writer cannot forge a backup, but can delete the newest one (or its
    manifest) so that `latest` quietly means an older backup.  When the newest
    backup seen here before is gone and nothing newer replaced it, readers say
    so and `latest` refuses until an operator accepts it.  Kept beside the
    cache: a host that loses it loses only this detection (it fails open).
    """

    def __init__(self, root: Path, repository_url: str) -> None:
        self._path = (
            root / hashlib.sha256(repository_url.encode()).hexdigest()[:24] / "highwater.json"
        )

    def read(self) -> tuple[str, str] | None:
        """(start time, backup id) of the newest backup seen, if recorded."""
        try:
            doc = json.loads(self._path.read_bytes()[:4096])
            return str(doc["start_time"]), str(doc["backup_id"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None

    def write(self, start_time: str, backup_id: str) -> None:
        with contextlib.suppress(OSError):
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self._path.with_name(f".tmp-{os.getpid()}-highwater")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"start_time": start_time, "backup_id": backup_id}, f)
            os.replace(tmp, self._path)

    def forget(self) -> None:
        with contextlib.suppress(OSError):
            self._path.unlink()
