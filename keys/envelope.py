"""Key objects: a backup's data key, stored only wrapped, apart from the data.

    {"format": "ebk-key-object", "version": 1, "backup_id": ..., "dek_id": ...,
     "context": {"backup_id": ..., "cluster": ..., "dek_id": ...},
     "slots": [{"provider": ..., "kek_id": ..., "wrapped": "<base64>"}]}

Like LUKS keyslots, one DEK can be wrapped by several KEKs.  A KEK rotation
rewrites only this object; the data objects are never touched.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ebk.errors import EbkError, IntegrityError, KeyProviderError, WrongKey
from ebk.keys.base import KeyProvider, WrappedKey

MAX_KEY_OBJECT_SIZE = 64 * 1024


@dataclass
class KeyObject:
    backup_id: str
    dek_id: str
    context: dict[str, str]
    slots: list[WrappedKey] = field(default_factory=list)

    def to_json(self) -> bytes:
        doc = {
            "format": "ebk-key-object",
            "version": 1,
            "backup_id": self.backup_id,
            "dek_id": self.dek_id,
            "context": self.context,
            "slots": [
                {
                    "provider": s.provider,
                    "kek_id": s.kek_id,
                    "wrapped": base64.b64encode(s.ciphertext).decode(),
                }
                for s in self.slots
            ],
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, *, where: str) -> KeyObject:
        if len(raw) > MAX_KEY_OBJECT_SIZE:
            raise IntegrityError(f"key object {where} is implausibly large ({len(raw)} bytes)")
        try:
            doc = json.loads(raw)
            if doc["format"] != "ebk-key-object" or doc["version"] != 1:
                raise ValueError("unknown format or version")
            slots = [
                WrappedKey(
                    s["provider"], s["kek_id"], base64.b64decode(s["wrapped"], validate=True)
                )
                for s in doc["slots"]
            ]
            context = {str(k): str(v) for k, v in doc["context"].items()}
            # The top-level ids are not covered by the KEK; the context is. They must agree.
            if set(context) != {"backup_id", "cluster", "dek_id"}:
                raise ValueError("the context must name exactly backup_id, cluster, dek_id")
            if doc["dek_id"] != context["dek_id"] or doc["backup_id"] != context["backup_id"]:
                raise ValueError("backup_id/dek_id disagree with the wrapped context")
            return cls(doc["backup_id"], doc["dek_id"], context, slots)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise IntegrityError(f"key object {where} is malformed ({exc})") from None


def key_context(backup_id: str, cluster: str, dek_id: str) -> dict[str, str]:
    """What every wrapped DEK is bound to: its backup, its cluster, its own id."""
    return {"backup_id": backup_id, "cluster": cluster, "dek_id": dek_id}


def new_data_key(
    providers: Sequence[KeyProvider], *, backup_id: str, cluster: str
) -> tuple[bytes, KeyObject]:
    """A fresh 256-bit DEK, wrapped by every provider (primary first)."""
    if not providers:
        raise KeyProviderError(
            "no key provider configured; refusing to write an unencrypted backup"
        )
    dek = secrets.token_bytes(32)
    dek_id = f"dek-{secrets.token_hex(8)}"
    context = key_context(backup_id, cluster, dek_id)
    slots = [p.wrap(dek, context) for p in providers]
    return dek, KeyObject(backup_id, dek_id, context, slots)


def open_data_key(
    key_object: KeyObject, providers: Sequence[KeyProvider], *, backup_id: str
) -> bytes:
    """Unwrap the DEK with the first provider that owns a slot and succeeds."""
    if key_object.backup_id != backup_id or key_object.context.get("backup_id") != backup_id:
        raise WrongKey(
            f"the key object in backup {backup_id} belongs to backup {key_object.backup_id}",
            hint="a key object was copied between backups; restore that backup's own key.json",
        )
    errors: list[EbkError] = []
    for slot in key_object.slots:
        for provider in providers:
            if not provider.owns(slot):
                continue
            try:
                dek = provider.unwrap(slot, key_object.context)
            except KeyProviderError as exc:
                errors.append(exc)
                continue
            if len(dek) != 32:
                raise WrongKey(
                    f"slot {slot.provider}/{slot.kek_id} unwrapped to a key of wrong size"
                )
            return dek
    if errors:
        raise errors[0]
    held = ", ".join(f"{s.provider}/{s.kek_id}" for s in key_object.slots) or "none"
    raise WrongKey(
        f"no configured key provider can unwrap backup {backup_id} (its key slots: {held})",
        hint="configure the provider that wrapped it, or use --recovery-key with the offline key",
    )


def rewrap_key_object(key_object: KeyObject, providers: Mapping[str, KeyProvider]) -> KeyObject:
    """Rewrap every slot whose provider is available; others are kept as they are."""
    slots = []
    for slot in key_object.slots:
        provider = providers.get(slot.provider)
        slots.append(provider.rewrap(slot, key_object.context) if provider else slot)
    return KeyObject(key_object.backup_id, key_object.dek_id, key_object.context, slots)
