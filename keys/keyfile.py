"""The embedded default KEK: a local key file created by ``ebk init``.

File format (JSON, mode 0600):
    {"type": "ebk-kek-file", "version": 1, "primary": "<kek id>",
     "keys": [{"id": "<kek id>", "created": "<iso8601>", "key": "<base64, 32 bytes>"}]}

Rotation appends a key and moves ``primary``; old keys stay so that wrapped
DEKs can be rewrapped.  A slot is nonce(12) | AES-256-GCM(kek, dek, aad), with
aad = "ebk/keyfile/v1" | canonical context.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ebk.errors import KeyProviderError, WrongKey
from ebk.keys.base import WrappedKey, canonical_context
from ebk.keys.lifecycle import KekInfo, KekVersion
from ebk.privatefile import read_private_file

FILE_TYPE = "ebk-kek-file"
_AAD_LABEL = b"ebk/keyfile/v1"


def _new_kek_id() -> str:
    return f"kek-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"


def _entry(kek_id: str) -> dict[str, str]:
    return {
        "id": kek_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "key": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


def _write_private(
    path: Path, document: dict[str, Any], *, like: os.stat_result | None = None
) -> None:
    """Write atomically and durably: temp file, fsync, rename, fsync of the directory.

    ``like``: the file being replaced; its mode and owner carry over (a key
    file made 0400 and owned by the service user stays so after a rotation).
    """
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            if like is not None:
                if (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                    os.fchown(f.fileno(), like.st_uid, like.st_gid)
                os.fchmod(f.fileno(), stat.S_IMODE(like.st_mode))
            json.dump(document, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def create_key_file(path: Path) -> str:
    """Create a new key file with mode 0600; refuse to overwrite one."""
    if path.is_dir():
        raise KeyProviderError(
            f"key file {path} is a directory, not a file",
            hint=f"set keys.keyfile to a file path inside it, e.g. {path / 'kek.json'}",
        )
    if os.path.lexists(path):
        raise KeyProviderError(
            f"key file {path} already exists; refusing to overwrite a key",
            hint="losing a KEK makes every backup it wraps unreadable; pick another path",
        )
    kek_id = _new_kek_id()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(
            path, {"type": FILE_TYPE, "version": 1, "primary": kek_id, "keys": [_entry(kek_id)]}
        )
    except OSError as exc:
        raise KeyProviderError(
            f"cannot create key file {path}: {exc.strerror or exc}",
            hint=f"check that {path.parent} can be created and written by this user",
        ) from None
    return kek_id


class KeyFileProvider:
    """KEKs held in a local file; the file must be readable by its owner only.

    The file is opened once and checked on the descriptor (ebk/privatefile.py):
    regular file, owned by the user running ebk or root, no group/other bits,
    in a directory nobody else can write.  A symlink is followed only when the
    directory holding it is private; ``real_path`` is the file actually used.
    """

    name = "keyfile"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._primary, self._keys = self._load()

    def _load(self) -> tuple[str, dict[str, bytes]]:
        self.real_path, raw = read_private_file(
            self.path,
            "key file",
            KeyProviderError,
            missing_hint="create one with `ebk init`, or set keys.keyfile to the right path",
        )
        try:
            doc = json.loads(raw)
            if doc.get("type") != FILE_TYPE or doc.get("version") != 1:
                raise ValueError("not an ebk key file")
            keys = {k["id"]: base64.b64decode(k["key"], validate=True) for k in doc["keys"]}
            self._created = {str(k["id"]): str(k.get("created", "")) for k in doc["keys"]}
            primary = doc["primary"]
            if primary not in keys or any(len(v) != 32 for v in keys.values()):
                raise ValueError("inconsistent key file")
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyProviderError(
                f"key file {self.path} is not a valid ebk key file ({exc})",
                hint="restore it from your key backup; `ebk init` creates new ones",
            ) from None
        self._stamp = _stamp(self.real_path)
        return primary, keys

    @property
    def primary_kek_id(self) -> str:
        return self._primary

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        # A long-running process (the daemon) picks up a rotation made by another one.
        if _stamp(self.real_path) != self._stamp:
            self._primary, self._keys = self._load()
        return self._wrap_with(self._primary, dek, context)

    def _wrap_with(self, kek_id: str, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._keys[kek_id]).encrypt(
            nonce, dek, _AAD_LABEL + canonical_context(context)
        )
        return WrappedKey(self.name, kek_id, nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        kek = self._keys.get(wrapped.kek_id)
        if kek is None:
            raise WrongKey(
                f"the data key is wrapped by KEK {wrapped.kek_id}, which is not in {self.path} "
                f"(it holds {', '.join(self._keys)})",
                hint=self._missing_hint(wrapped.kek_id),
            )
        try:
            return AESGCM(kek).decrypt(
                wrapped.ciphertext[:12],
                wrapped.ciphertext[12:],
                _AAD_LABEL + canonical_context(context),
            )
        except InvalidTag:
            raise WrongKey(
                f"the data key does not unwrap with KEK {wrapped.kek_id}: the key object was "
                "modified or belongs to another backup",
                hint="the key object must come from the same backup as its data",
            ) from None

    def _missing_hint(self, kek_id: str) -> str:
        """Rotation adds KEKs and `ebk keys rewrap` moves every backup to the newest one,
        so an old copy of the key file does not open backups re-wrapped after it was made."""
        claimed = kek_id.split("-")[1] if kek_id.count("-") >= 2 else ""
        newest = max((self._created.get(k, "") for k in self._keys), default="")
        if claimed.isdigit() and newest and claimed > newest[:10].replace("-", ""):
            return (
                f"this key file is older than KEK {kek_id}: after a rotation, `ebk keys "
                "rewrap` re-wraps every backup under the new KEK, so use the current key file "
                f"(or a backup of it made after {claimed[:4]}-{claimed[4:6]}-{claimed[6:]}); "
                "or restore with --recovery-key"
            )
        return (
            f"use the current key file, or a backup of it that holds {kek_id} (a key file "
            "keeps every KEK until `ebk keys retire --force` removes it); or restore with "
            "--recovery-key"
        )

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        if wrapped.kek_id == self._primary:
            return wrapped
        return self.wrap(self.unwrap(wrapped, context), context)

    def owns(self, wrapped: WrappedKey) -> bool:
        return wrapped.provider == self.name

    def describe(self) -> dict[str, str]:
        return {"provider": self.name, "path": str(self.path), "kek_id": self._primary}

    def _rewrite(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Re-read, change and atomically replace the key file (the symlink's target, with
        its mode and owner), then load what was written."""
        self.real_path, raw = read_private_file(
            self.path, "key file", KeyProviderError, missing_hint="restore it from your key backup"
        )
        doc = json.loads(raw)
        change(doc)
        # Replace the checked file itself: a symlinked key file stays a symlink.
        _write_private(self.real_path, doc, like=os.stat(self.real_path))
        self._primary, self._keys = self._load()

    def rotate(self) -> str:
        """Add a new KEK version beside the old ones and make it primary."""
        kek_id = _new_kek_id()

        def add(doc: dict[str, Any]) -> None:
            doc["keys"].append(_entry(kek_id))
            doc["primary"] = kek_id

        self._rewrite(add)
        return kek_id

    # --- lifecycle (ebk/keys/lifecycle.py) -----------------------------------

    rewrap_needs_force = False

    def kek_info(self) -> KekInfo:
        versions = [
            KekVersion(
                k, _parse_time(self._created.get(k, "")), usable=True, current=k == self._primary
            )
            for k in self._keys
        ]
        return KekInfo(self.name, str(self.path), versions)

    def rotate_kek(self) -> str:
        return self.rotate()

    def version_of(self, slot: WrappedKey) -> str:
        return slot.kek_id

    def retire_versions(self, kek_ids: list[str], *, apply: bool) -> list[str]:
        """Remove old KEKs from the file (only with apply: the CLI's --force)."""
        if self._primary in kek_ids:
            raise KeyProviderError(f"refusing to remove the primary KEK {self._primary}")
        if not apply:
            return [f"would remove KEK {k} from {self.real_path}" for k in kek_ids]

        def drop(doc: dict[str, Any]) -> None:
            doc["keys"] = [k for k in doc["keys"] if k["id"] not in kek_ids]

        self._rewrite(drop)
        return [f"removed KEK {k} from {self.real_path}" for k in kek_ids]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _parse_time(text: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
