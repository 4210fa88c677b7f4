"""The volume key lifecycle: init, unlock, lock, status, rotate (one function each).

Order of effects, so that a failure changes nothing: everything that can be
checked or asked of the KMS is done before the kernel or the disk is touched,
and a key object is durable before the volume depends on it.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ebk.errors import EbkError, KeyProviderError
from ebk.keys.base import KeyProvider
from ebk.volume import fscrypt, luks
from ebk.volume.errors import NotAnEncryptedVolume, VolumeUsageError
from ebk.volume.keyobject import KeyObject, KeyStore, check_name
from ebk.volume.secret import SecretKey

ProviderFactory = Callable[[], KeyProvider]

FSCRYPT_ROTATION = (
    "fscrypt cannot change the key of an existing directory: every file is encrypted "
    "with keys derived from it. Rotate by re-encrypting into a new directory: "
    "`ebk volume init --type fscrypt NEW`, stop PostgreSQL, copy (`cp -a OLD/. NEW/`), "
    "point PGDATA (or the unit) at NEW, start and check, then `ebk volume lock OLD` and "
    'delete OLD and its key object (docs/key-management.md, "Volume keys")'
)


def volume_type(target: Path) -> str:
    return "fscrypt" if target.is_dir() else "luks2"


def _missing_object(target: Path, where: Path) -> KeyProviderError:
    return KeyProviderError(
        f"no ebk key object for {target} (looked for {where})",
        hint="was it created by `ebk volume init` with this config's [volume] key_dir / "
        "key_placement? restore the object from the backup of the key directory",
    )


def _identify(target: Path) -> tuple[str, str]:
    """(type, uuid) read from the volume itself."""
    if target.is_dir():
        return "fscrypt", fscrypt.volume_policy(target).key_id.hex()
    return "luks2", luks.luks_uuid(target)


def init(
    store: KeyStore, provider: ProviderFactory, vtype: str, target: Path, name: str | None
) -> dict[str, str]:
    target = Path(target)
    if vtype == "fscrypt":
        return _init_fscrypt(store, provider, target, check_name(name or target.name))
    return _init_luks(store, provider, target, check_name(name or target.name))


def _init_fscrypt(
    store: KeyStore, provider: ProviderFactory, target: Path, name: str
) -> dict[str, str]:
    fscrypt.check_empty_dir(target)
    kms = provider()  # a missing key file fails before the kernel is touched
    probe_dir = target if target.exists() else target.parent
    with SecretKey.random() as key:
        ident = fscrypt.add_key(probe_dir, key)
        uuid = ident.hex()
        try:
            obj = KeyObject.wrap(
                kms, key, vtype="fscrypt", uuid=uuid, name=name, target=str(target)
            )
            where = store.path_for("fscrypt", uuid, target)
            store.save(where, obj)
        except BaseException:
            fscrypt.remove_key(probe_dir, ident)
            raise
        try:
            fscrypt.set_policy(target, ident)
        except BaseException:
            store.remove(where)
            fscrypt.remove_key(probe_dir, ident)
            raise
    return {"type": "fscrypt", "name": name, "uuid": uuid, "target": str(target),
            "key_object": str(where), "state": "unlocked"}  # fmt: skip


def _init_luks(
    store: KeyStore, provider: ProviderFactory, device: Path, name: str
) -> dict[str, str]:
    luks.check_formattable(device)
    kms = provider()
    uuid = str(uuidlib.uuid4())
    where = store.path_for("luks2", uuid, device)
    with SecretKey.random() as key:
        obj = KeyObject.wrap(kms, key, vtype="luks2", uuid=uuid, name=name, target=str(device))
        store.save(where, obj)
        try:
            luks.format_device(device, uuid, key)
        except BaseException:
            store.remove(where)
            raise
        luks.open_device(device, luks.mapping_name(name), key)
    return {"type": "luks2", "name": name, "uuid": uuid, "target": str(device),
            "key_object": str(where), "state": "unlocked",
            "device": f"/dev/mapper/{luks.mapping_name(name)}"}  # fmt: skip


def _load(store: KeyStore, vtype: str, uuid: str, target: Path) -> tuple[Path, KeyObject]:
    where = store.path_for(vtype, uuid, target)
    obj = store.load(where)
    if obj is None:
        raise _missing_object(target, where)
    return where, obj


def unlock(store: KeyStore, provider: ProviderFactory, target: Path) -> dict[str, str]:
    """Idempotent: an unlocked volume is a success ("already unlocked"), with no KMS call."""
    vtype, uuid = _identify(target)
    where, obj = _load(store, vtype, uuid, target)
    result = {"type": vtype, "name": obj.name, "uuid": uuid, "target": str(target)}
    if vtype == "fscrypt":
        ident = bytes.fromhex(uuid)
        if fscrypt.key_state(target, ident) == fscrypt.STATUS_PRESENT:
            return {**result, "state": "already unlocked"}
        with obj.unwrap(provider(), vtype=vtype, uuid=uuid) as key:
            got = fscrypt.add_key(target, key)
        if got != ident:  # only a KEK holder could wrap a wrong key under this context
            fscrypt.remove_key(target, got)
            raise KeyProviderError(f"the key of {where} does not belong to {target}")
        return {**result, "state": "unlocked"}
    mapping = luks.active_mapping(uuid)
    if mapping is not None:
        return {**result, "state": "already unlocked", "device": f"/dev/mapper/{mapping.name}"}
    name = luks.mapping_name(obj.name)
    with obj.unwrap(provider(), vtype=vtype, uuid=uuid) as key:
        luks.open_device(target, name, key)
    return {**result, "state": "unlocked", "device": f"/dev/mapper/{name}"}


def lock(target: Path) -> dict[str, str]:
    """Needs no key and no KMS; idempotent ("already locked")."""
    vtype, uuid = _identify(target)
    if vtype == "fscrypt":
        state = fscrypt.lock(target, bytes.fromhex(uuid))
    else:
        state = luks.close(uuid, target)
    return {"type": vtype, "uuid": uuid, "target": str(target), "state": state}


def _state(vtype: str, uuid: str, target: Path) -> dict[str, str]:
    try:
        if vtype == "fscrypt":
            if fscrypt.volume_policy(target).key_id.hex() != uuid:
                return {"state": "other volume at target"}
            return {
                "state": fscrypt.STATES.get(fscrypt.key_state(target, bytes.fromhex(uuid)), "?")
            }
        if luks.luks_uuid(target) != uuid:
            return {"state": "other volume at target"}
        mapping = luks.active_mapping(uuid)
        if mapping is None:
            return {"state": "locked"}
        return {"state": "unlocked", "device": f"/dev/mapper/{mapping.name}",
                "mounted_at": ", ".join(mapping.mounted_at)}  # fmt: skip
    except (EbkError, OSError) as exc:
        return {"state": "missing", "problem": str(exc).splitlines()[0]}


def status(store: KeyStore, target: Path | None) -> list[dict[str, str]]:
    if target is not None:
        vtype, uuid = _identify(target)
        where = store.path_for(vtype, uuid, target)
        obj = store.load(where)
        row = {"type": vtype, "uuid": uuid, "target": str(target), "key_object": str(where)}
        if obj is None:
            row |= {"name": "", "provider": "", "kek_id": "", "key_object": "(none)"}
        else:
            row |= {"name": obj.name, "provider": obj.provider, "kek_id": obj.kek_id}
        return [row | _state(vtype, uuid, target)]
    rows = []
    for path, found in store.listing():
        if isinstance(found, str):
            rows.append({"key_object": str(path), "state": "damaged", "problem": found})
            continue
        row = {
            "type": found.type,
            "name": found.name,
            "uuid": found.uuid,
            "target": found.target,
            "key_object": str(path),
            "provider": found.provider,
            "kek_id": found.kek_id,
        }
        rows.append(row | _state(found.type, found.uuid, Path(found.target)))
    return rows


def rotate(store: KeyStore, provider: ProviderFactory, target: Path) -> dict[str, Any]:
    vtype, uuid = _identify(target)
    if vtype == "fscrypt":
        raise VolumeUsageError(
            f"{target}: an fscrypt volume's key cannot be rotated in place; nothing was changed",
            hint=FSCRYPT_ROTATION,
        )
    where, obj = _load(store, vtype, uuid, target)
    kms = provider()
    with obj.unwrap(kms, vtype=vtype, uuid=uuid) as old, SecretKey.random() as new:
        rotated = obj.rewrapped(kms, new)
        pending = where.with_name(where.name + ".new")
        store.save(pending, rotated)  # durable before the new keyslot exists
        try:
            luks.add_key(target, old, new)
        except BaseException:
            store.remove(pending)
            raise
        if not luks.key_opens(target, new):
            raise NotAnEncryptedVolume(f"the new keyslot of {target} does not open it")
        store.save(where, rotated)  # the old object is kept until the new slot works
        store.remove(pending)
        luks.remove_key(target, old)
        old_opens = luks.key_opens(target, old)
    if old_opens:
        raise VolumeUsageError(f"the old key still opens {target} after luksRemoveKey")
    return {
        "type": vtype,
        "name": obj.name,
        "uuid": uuid,
        "target": str(target),
        "key_object": str(where),
        "kek_id": rotated.kek_id,
        "rotated": rotated.rotated,
    }
