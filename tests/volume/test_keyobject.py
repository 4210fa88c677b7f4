"""The volume key object without a kernel: wrap/unwrap bound to the volume, damaged or
oversized objects refused, atomic 0600 writes, and the key buffer wiped after use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ebk.config import VolumeConfig
from ebk.errors import KeyProviderError, WrongKey
from ebk.keys.keyfile import KeyFileProvider, create_key_file
from ebk.volume.errors import VolumeUsageError
from ebk.volume.keyobject import MAX_OBJECT_SIZE, KeyObject, KeyStore, check_name
from ebk.volume.secret import SecretKey

UUID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.fixture
def provider(tmp_path: Path) -> KeyFileProvider:
    create_key_file(tmp_path / "kek" / "kek.json")
    return KeyFileProvider(tmp_path / "kek" / "kek.json")


def test_round_trip_through_the_store(tmp_path: Path, provider: KeyFileProvider) -> None:
    store = KeyStore(VolumeConfig(key_dir=str(tmp_path / "volumes")))
    with SecretKey.random() as key:
        original = bytes(key.buf)
        obj = KeyObject.wrap(provider, key, vtype="fscrypt", uuid=UUID, name="pg", target="/x")
    where = store.path_for("fscrypt", UUID, Path("/x"))
    assert where == tmp_path / "volumes" / f"fscrypt-{UUID}.json"
    store.save(where, obj)
    assert where.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "volumes").stat().st_mode & 0o777 == 0o700
    assert original.hex() not in where.read_text() and original not in where.read_bytes()
    loaded = store.load(where)
    assert loaded == obj
    with loaded.unwrap(provider, vtype="fscrypt", uuid=UUID) as key:
        assert bytes(key.buf) == original
    assert [p for p, _ in store.listing()] == [where]


def test_the_context_binds_type_uuid_and_name(tmp_path: Path, provider: KeyFileProvider) -> None:
    with SecretKey.random() as key:
        obj = KeyObject.wrap(provider, key, vtype="luks2", uuid=UUID, name="pg", target="/dev/x")
    other = "11111111-2222-3333-4444-555555555555"
    with pytest.raises(WrongKey, match="another volume"):
        obj.unwrap(provider, vtype="luks2", uuid=other)
    for field, value in (("uuid", other), ("name", "other"), ("type", "fscrypt")):
        doc = json.loads(obj.to_json())
        doc[field] = value
        forged = KeyObject.parse(json.dumps(doc).encode(), Path("forged.json"))
        with pytest.raises(WrongKey, match="does not unwrap"):
            forged.unwrap(provider, vtype=forged.type, uuid=forged.uuid)


def test_damaged_objects_are_refused(tmp_path: Path) -> None:
    for raw in (b"{", b'{"format": "other"}', b"x" * (MAX_OBJECT_SIZE + 1)):
        with pytest.raises(KeyProviderError, match="is damaged"):
            KeyObject.parse(raw, tmp_path / "o.json")
    with pytest.raises(VolumeUsageError):
        check_name("../etc")


def test_beside_placement_for_fscrypt_only(tmp_path: Path) -> None:
    store = KeyStore(VolumeConfig(key_dir=str(tmp_path / "v"), key_placement="beside"))
    assert store.path_for("fscrypt", UUID, Path("/srv/pg")) == Path("/srv/.pg.ebk-volume.json")
    assert store.path_for("luks2", UUID, Path("/dev/vdb")).parent == tmp_path / "v"


def test_secret_key_is_wiped_on_close() -> None:
    key = SecretKey.random()
    view = memoryview(key.buf)  # keeps the key's own buffer alive after close()
    assert any(view)
    key.close()
    assert not any(view) and len(view) == 64  # zeroed in place, not just dropped
    assert len(key) == 0
