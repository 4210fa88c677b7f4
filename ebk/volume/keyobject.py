"""The volume key object: one volume's key, wrapped by the KEK, and where it is kept.

File (JSON, mode 0600, written atomically)::

    {"format": "ebk-volume-key", "version": 1, "type": "fscrypt" | "luks2",
     "name": "<label>", "uuid": "<volume uuid>", "target": "<path or device at init>",
     "created": "<iso8601>", "rotated": "<iso8601>" | "",
     "slot": {"provider": "...", "kek_id": "...", "wrapped": "<base64>"}}

Authentication: the wrap context is ``{"purpose": "ebk-volume-key", "volume_type",
"volume_uuid", "volume_name"}`` with the uuid read *from the volume* (fscrypt: the
policy's key identifier; LUKS2: the header uuid), never from the object, so an
object swapped in from another volume or edited fails to unwrap (WrongKey, exit 3)
before anything touches the kernel.  ``target`` is a display hint only.

Placement (``[volume]``): ``key_dir/<type>-<uuid>.json`` (default
/var/lib/ebk/volumes, 0700), or for fscrypt with ``key_placement = "beside"``
``PARENT/.NAME.ebk-volume.json`` next to the encrypted directory.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ebk.config import VolumeConfig
from ebk.errors import KeyProviderError, WrongKey
from ebk.keys.base import KeyProvider, WrappedKey
from ebk.privatefile import read_private_file
from ebk.volume.errors import VolumeUsageError
from ebk.volume.secret import SecretKey

FORMAT = "ebk-volume-key"
PURPOSE = "ebk-volume-key"
MAX_OBJECT_SIZE = 64 * 1024
MAX_OBJECTS = 10_000
TYPES = ("fscrypt", "luks2")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UUID = re.compile(r"^[0-9a-f][0-9a-f-]{7,63}$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise VolumeUsageError(
            f"volume name {name[:80]!r} is not usable",
            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(it names the key object and the /dev/mapper/ebk-NAME device)",
        )
    return name


def context(vtype: str, uuid: str, name: str) -> dict[str, str]:
    return {"purpose": PURPOSE, "volume_type": vtype, "volume_uuid": uuid, "volume_name": name}


@dataclass(frozen=True)
class KeyObject:
    type: str
    name: str
    uuid: str
    target: str
    created: str
    rotated: str
    provider: str
    kek_id: str
    wrapped: bytes

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": 1,
            **{k: v for k, v in asdict(self).items() if k not in ("provider", "kek_id", "wrapped")},
            "slot": {
                "provider": self.provider,
                "kek_id": self.kek_id,
                "wrapped": base64.b64encode(self.wrapped).decode(),
            },
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes, where: Path) -> KeyObject:
        """Shape checks only; authenticity comes from the unwrap."""
        try:
            if len(raw) > MAX_OBJECT_SIZE:
                raise ValueError(f"larger than {MAX_OBJECT_SIZE} bytes")
            doc = json.loads(raw)
            if doc.get("format") != FORMAT or doc.get("version") != 1:
                raise ValueError("not an ebk volume key object")
            slot = doc["slot"]
            obj = cls(
                type=str(doc["type"]),
                name=str(doc["name"]),
                uuid=str(doc["uuid"]),
                target=str(doc.get("target", "")),
                created=str(doc.get("created", "")),
                rotated=str(doc.get("rotated", "")),
                provider=str(slot["provider"]),
                kek_id=str(slot["kek_id"]),
                wrapped=base64.b64decode(slot["wrapped"], validate=True),
            )
            if obj.type not in TYPES or not _NAME.match(obj.name) or not _UUID.match(obj.uuid):
                raise ValueError("bad type, name or uuid")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyProviderError(
                f"volume key object {where} is damaged ({exc})",
                hint="restore it from your backup of the key directory",
            ) from None
        return obj

    def slot(self) -> WrappedKey:
        return WrappedKey(self.provider, self.kek_id, self.wrapped)

    def unwrap(self, provider: KeyProvider, *, vtype: str, uuid: str) -> SecretKey:
        """The volume key, if this object was wrapped for exactly this volume."""
        if self.type != vtype or self.uuid != uuid:
            raise WrongKey(
                f"the key object names {self.type} volume {self.name!r} (uuid {self.uuid}), "
                f"but this volume is {vtype} uuid {uuid}",
                hint="the key object belongs to another volume; restore this volume's own "
                "object from the backup of the key directory",
            )
        if not provider.owns(self.slot()):
            raise WrongKey(
                f"volume {self.name!r} is wrapped by provider {self.provider!r}, "
                f"but keys.provider is {provider.name!r}",
                hint="use the configuration (keys.provider) that ran `ebk volume init`",
            )
        plain = provider.unwrap(self.slot(), context(vtype, uuid, self.name))
        try:
            return SecretKey.adopt(plain)
        finally:
            del plain

    @classmethod
    def wrap(
        cls, provider: KeyProvider, key: SecretKey, *, vtype: str, uuid: str, name: str,
        target: str,
    ) -> KeyObject:  # fmt: skip
        slot = provider.wrap(bytes(key.buf), context(vtype, uuid, name))
        now = datetime.now(UTC).isoformat(timespec="seconds")
        return cls(vtype, name, uuid, target, now, "", slot.provider, slot.kek_id, slot.ciphertext)

    def rewrapped(self, provider: KeyProvider, key: SecretKey) -> KeyObject:
        """The same volume with a new key (rotation)."""
        new = KeyObject.wrap(
            provider, key, vtype=self.type, uuid=self.uuid, name=self.name, target=self.target
        )
        return replace(new, created=self.created, rotated=new.created)


class KeyStore:
    """Where key objects live: ``volume.key_dir`` or beside an fscrypt directory."""

    def __init__(self, cfg: VolumeConfig) -> None:
        self.cfg = cfg
        self.key_dir = Path(cfg.key_dir)

    def path_for(self, vtype: str, uuid: str, target: Path) -> Path:
        if vtype == "fscrypt" and self.cfg.key_placement == "beside":
            return target.parent / f".{target.name}.ebk-volume.json"
        return self.key_dir / f"{vtype}-{uuid}.json"

    def load(self, path: Path) -> KeyObject | None:
        if not os.path.lexists(path):
            return None
        _, raw = read_private_file(
            path, "volume key object", KeyProviderError, missing_hint="restore it from a backup"
        )
        return KeyObject.parse(raw, path)

    def save(self, path: Path, obj: KeyObject) -> None:
        """Atomic and durable: temp file 0600, fsync, rename, fsync the directory."""
        try:
            if path.parent == self.key_dir:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, obj.to_json())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise KeyProviderError(
                f"cannot write the volume key object {path}: {exc.strerror or exc}",
                hint=f"check that {path.parent} exists and is writable by this user "
                "(volume.key_dir)",
            ) from None

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def listing(self) -> list[tuple[Path, KeyObject | str]]:
        """Every object in key_dir (an error text for a damaged one), sorted by file name."""
        if not self.key_dir.is_dir():
            return []
        names = sorted(p for p in self.key_dir.iterdir() if p.suffix == ".json")[:MAX_OBJECTS]
        out: list[tuple[Path, KeyObject | str]] = []
        for path in names:
            try:
                obj = self.load(path)
            except KeyProviderError as exc:
                out.append((path, exc.message))
                continue
            if obj is not None:
                out.append((path, obj))
        return out
