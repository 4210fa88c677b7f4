"""The key file slot, key object, manifest MAC and naming rules, checked against docs/format.md.

Each check recomputes a value from the specification's formula with its own
code (a canonical JSON encoder written from the spec's rules, raw HKDF, HMAC
and AES-GCM), and compares it with what ebk writes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ebk.errors import IntegrityError, KeyProviderError, WrongKey
from ebk.keys.base import canonical_context
from ebk.keys.envelope import KeyObject, key_context, new_data_key, open_data_key
from ebk.keys.keyfile import KeyFileProvider, create_key_file
from ebk.manifest import Manifest, StoredObject
from ebk.repository.layout import new_backup_id, object_name, stream_context

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def spec_string(text: str) -> str:
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif cp < 0x20 or 0x7E < cp <= 0xFFFF:
            out.append(f"\\u{cp:04x}")
        elif cp > 0xFFFF:
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def spec_canonical(value: Any) -> str:
    """Canonical JSON exactly as the 'Conventions' section states it."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return spec_string(value)
    if isinstance(value, list):
        return "[" + ",".join(spec_canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{spec_string(k)}:{spec_canonical(value[k])}" for k in sorted(value))
            + "}"
        )
    raise TypeError(type(value))


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


AWKWARD = [
    "plain",
    'quote " backslash \\ slash /',
    "tab\tnl\ncr\rbs\bff\f",
    "\x00\x1f\x7f",
    "dätäbase",
    "日本",
    "emoji 🐘",
    "€uro",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_canonical_json_rules(text: str) -> None:
    context = {"z": text, "a": "1", "dek_id": text[::-1]}
    assert canonical_context(context) == spec_canonical(context).encode("ascii")


def test_keyfile_slot_matches_the_formula(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek.json"
    kek_id = create_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["type"] == "ebk-kek-file" and doc["version"] == 1 and doc["primary"] == kek_id
    assert re.fullmatch(r"kek-\d{8}-[0-9a-f]{8}", kek_id)
    kek = base64.b64decode(doc["keys"][0]["key"])
    assert len(kek) == 32

    provider = KeyFileProvider(path)
    dek = bytes(range(32))
    context = key_context("20261128T142301Z-3fa9c1", "7713232264135747606", "dek-00112233aabbccdd")
    slot = provider.wrap(dek, context)
    assert (slot.provider, slot.kek_id, len(slot.ciphertext)) == ("keyfile", kek_id, 60)
    aad = b"ebk/keyfile/v1" + spec_canonical(context).encode()
    assert AESGCM(kek).decrypt(slot.ciphertext[:12], slot.ciphertext[12:], aad) == dek
    # and the other way round: a slot sealed by the formula unwraps in ebk
    nonce = bytes(12)
    made = type(slot)("keyfile", kek_id, nonce + AESGCM(kek).encrypt(nonce, dek, aad))
    assert provider.unwrap(made, context) == dek
    with pytest.raises(WrongKey):
        provider.unwrap(slot, {**context, "backup_id": "20261128T142301Z-000000"})


def test_key_file_with_group_or_other_bits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    create_key_file(path)
    for mode in (0o640, 0o604, 0o610, 0o601):
        path.chmod(mode)
        with pytest.raises(KeyProviderError, match="chmod 600"):
            KeyFileProvider(path)


def test_key_object_document_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    create_key_file(path)
    provider = KeyFileProvider(path)
    backup_id = new_backup_id()
    dek, key_object = new_data_key([provider], backup_id=backup_id, cluster="42")
    doc = json.loads(key_object.to_json())
    assert doc["format"] == "ebk-key-object" and doc["version"] == 1
    assert doc["backup_id"] == doc["context"]["backup_id"] == backup_id
    assert doc["dek_id"] == doc["context"]["dek_id"]
    assert re.fullmatch(r"dek-[0-9a-f]{16}", doc["dek_id"])
    assert doc["context"]["cluster"] == "42"
    assert set(doc["context"]) == {"backup_id", "cluster", "dek_id"}
    assert len(base64.b64decode(doc["slots"][0]["wrapped"])) == 60

    parsed = KeyObject.from_json(key_object.to_json(), where="key.json")
    assert open_data_key(parsed, [provider], backup_id=backup_id) == dek
    with pytest.raises(WrongKey, match="belongs to backup"):
        open_data_key(parsed, [provider], backup_id=new_backup_id())
    with pytest.raises(IntegrityError):
        KeyObject.from_json(b"x" * (64 * 1024 + 1), where="key.json")


def jcs(value: Any) -> bytes:
    """RFC 8785 for the JSON ebk writes (strings, integers, lists, objects), from the RFC.

    Members sorted by their UTF-16 code units, no whitespace, strings in UTF-8
    with only the escapes the RFC lists (lower-case \\u00xx for other controls).
    """
    if value is None or isinstance(value, bool):
        return json.dumps(value).encode()
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in _ESCAPES:
                out.append(_ESCAPES[ch])
            elif ord(ch) < 0x20:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return ('"' + "".join(out) + '"').encode()
    if isinstance(value, list):
        return b"[" + b",".join(jcs(v) for v in value) + b"]"
    assert isinstance(value, dict)
    keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
    return b"{" + b",".join(jcs(k) + b":" + jcs(value[k]) for k in keys) + b"}"


def _manifest() -> Manifest:
    return Manifest(
        backup_id="20261128T142301000001Z-3fa9c1",
        kind="logical",
        ebk_version="0.2.0",
        system_identifier="7713232264135747606",
        server_version="15.18 (Debian 15.18-0+deb12u1)",
        server_version_num=150018,
        start_time="2026-11-28T14:23:01.000001+00:00",
        stop_time="2026-11-28T14:23:09+00:00",
        dek_id="dek-00112233aabbccdd",
        key_slots=["keyfile/kek-20261128-333e13cb"],
        objects=[
            StoredObject(
                "dump-0001.ebk", "dump", 10, 99, "ab" * 32, None, None, 'dätä "base"\n\x01🐘'
            )
        ],
        databases=['dätä "base"\n🐘'],
    )


def test_manifest_mac_matches_the_formula() -> None:
    dek = bytes(range(32, 64))
    manifest = _manifest()
    manifest.seal(dek)
    doc = json.loads(manifest.to_json())
    assert doc["format"] == "ebk-manifest" and doc["manifest_version"] == 2
    assert doc["stream_version"] == 1
    assert set(doc) == {
        "format",
        "manifest_version",
        "stream_version",
        "backup_id",
        "kind",
        "ebk_version",
        "system_identifier",
        "server_version",
        "server_version_num",
        "start_time",
        "stop_time",
        "databases",
        "dek_id",
        "key_slots",
        "objects",
        "auth",
    }
    assert set(doc["objects"][0]) == {
        "name",
        "role",
        "plain_size",
        "stored_size",
        "sha256",
        "database",
    }  # absent optional members are omitted
    mac_key = hkdf(dek, bytes(32), b"ebk/manifest/v2")
    body = {k: v for k, v in doc.items() if k != "auth"}
    expected = hmac.new(mac_key, jcs(body), hashlib.sha256)
    assert doc["auth"] == {"mac": expected.hexdigest()}

    reread = Manifest.from_json(manifest.to_json(), where="manifest.json")
    reread.verify(dek)
    with pytest.raises(IntegrityError, match="failed authentication"):
        reread.verify(bytes(32))


def test_the_mac_covers_the_stored_document_not_a_model() -> None:
    """Members a newer ebk adds are authenticated, kept and written back unchanged."""
    dek = bytes(range(32))
    doc = json.loads(_manifest().to_json())
    doc["x_future"] = {"chain": ["a", "b"], "n": 3}
    doc["objects"][0].pop("database")
    body = {k: v for k, v in doc.items() if k != "auth"}
    doc["auth"] = {
        "mac": hmac.new(
            hkdf(dek, bytes(32), b"ebk/manifest/v2"), jcs(body), hashlib.sha256
        ).hexdigest(),
        "sig": "for a later reader",
    }
    parsed = Manifest.from_json(json.dumps(doc, indent=3).encode(), where="m.json")
    parsed.verify(dek)  # another writer's formatting, same canonical bytes
    assert parsed.extensions == {"x_future": {"chain": ["a", "b"], "n": 3}}
    assert json.loads(parsed.to_json()) == doc
    doc["x_future"]["n"] = 4
    with pytest.raises(IntegrityError, match="failed authentication"):
        Manifest.from_json(json.dumps(doc).encode(), where="m.json").verify(dek)


def test_version_1_manifests_still_verify() -> None:
    """ebk 0.1 wrote format_version 1 with a MAC over its model (docs/format.md)."""
    dek = bytes(range(32, 64))
    body = {
        "format": "ebk-manifest",
        "format_version": 1,
        "backup_id": "20261128T142301Z-3fa9c1",
        "kind": "logical",
        "ebk_version": "0.1.0",
        "system_identifier": "7713232264135747606",
        "server_version": "15.18",
        "start_time": "2026-11-28T14:23:01+00:00",
        "stop_time": "2026-11-28T14:23:09+00:00",
        "dek_id": "dek-00112233aabbccdd",
        "key_slots": ["keyfile/kek-20261128-333e13cb"],
        "objects": [
            {
                "name": "dump-0001.ebk",
                "role": "dump",
                "plain_size": 10,
                "stored_size": 99,
                "sha256": "ab" * 32,
                "tablespace_oid": None,
                "tablespace_location": None,
                "database": "app",
            }
        ],
        "start_lsn": None,
        "stop_lsn": None,
        "timeline": None,
        "databases": ["app"],
    }
    mac = hmac.new(
        hkdf(dek, bytes(32), b"ebk/manifest/v1"),
        spec_canonical(body).encode("ascii"),
        hashlib.sha256,
    ).hexdigest()
    raw = json.dumps({**body, "mac": mac}, indent=2).encode()
    manifest = Manifest.from_json(raw, where="manifest.json")
    assert manifest.manifest_version == 1 and manifest.major == 15
    manifest.verify(dek)
    assert json.loads(manifest.to_json()) == {**body, "mac": mac}
    with pytest.raises(IntegrityError, match="failed authentication"):
        Manifest.from_json(raw.replace(b'"app"', b'"other"'), where="m").verify(dek)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(auth={}),
        lambda d: d.pop("auth"),
        lambda d: d["objects"][0].update(stored_size=100),
        lambda d: d.update(databases=["other"]),
        lambda d: d.update(timeline=1),
        lambda d: d.update(parent="20261128T142301Z-000000"),
    ],
)
def test_any_manifest_edit_fails_verification(edit: Any) -> None:
    dek = bytes(range(32))
    manifest = _manifest()
    manifest.seal(dek)
    doc = json.loads(manifest.to_json())
    edit(doc)
    with pytest.raises(IntegrityError):
        Manifest.from_json(json.dumps(doc).encode(), where="manifest.json").verify(dek)


@pytest.mark.parametrize(
    "raw_edit",
    [
        lambda d: d.update(format="other"),
        lambda d: d.update(manifest_version=3),
        lambda d: d.update(manifest_version=True),
        lambda d: d["objects"][0].update(extra="member"),
        lambda d: d["objects"][0].update(stored_size="99"),
        lambda d: d["objects"][0].update(plain_size=-1),
        lambda d: d["objects"][0].update(sha256="AB" * 32),
        lambda d: d["objects"][0].update(role="anything"),
        lambda d: d.update(kind="incremental-ish"),
        lambda d: d.update(stop_time=12),
        lambda d: d.update(x=2**60),  # outside I-JSON: no canonical form, refused
        lambda d: d.update(x=float("nan")),
        lambda d: d.clear(),
    ],
)
def test_malformed_manifest_is_rejected(raw_edit: Any) -> None:
    manifest = _manifest()
    manifest.seal(bytes(32))
    doc = json.loads(manifest.to_json())
    raw_edit(doc)
    with pytest.raises(IntegrityError, match="malformed"):
        Manifest.from_json(json.dumps(doc).encode(), where="manifest.json")


def test_duplicate_members_are_rejected() -> None:
    manifest = _manifest()
    manifest.seal(bytes(32))
    raw = manifest.to_json().replace(b'"kind": "logical"', b'"kind": "logical", "kind": "physical"')
    with pytest.raises(IntegrityError, match="duplicate member"):
        Manifest.from_json(raw, where="manifest.json")


def test_names_and_associated_data() -> None:
    backup_id = new_backup_id()
    assert re.fullmatch(r"\d{8}T\d{12}Z-[0-9a-f]{6}", backup_id)
    assert object_name(backup_id, "base.tar.ebk") == f"backups/{backup_id}/base.tar.ebk"
    assert stream_context(backup_id, "dump-0001.ebk") == f"ebk/{backup_id}/dump-0001.ebk".encode()
