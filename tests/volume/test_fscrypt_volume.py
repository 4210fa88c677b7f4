"""`ebk volume` on real fscrypt v2: an ext4 `-O encrypt` loop image, the kernel keyring,
PostgreSQL 15 writing into the volume, and volume keys wrapped by the key file and by
OpenBao Transit.  Locked: names are ciphertext, PostgreSQL cannot start, the image holds
no marker row; unlocked: the data is intact.  Refusals change nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebk.keys.keyfile import create_key_file
from tests.support.ebkenv import EbkEnv
from tests.support.encrypted_fs import loop_ext4
from tests.support.needs import need_root
from tests.support.net import free_port
from tests.support.openbao import Bao, vault_toml
from tests.support.postgres import give_to_postgres, init_cluster, make_postgres_dir

pytestmark = pytest.mark.root

MARKER = "ebk-volume-marker-7f3a9c"


class Volume:
    def __init__(self, image: Path, mount: Path, base: Path) -> None:
        self.image, self.mount, self.base = image, mount, base


@pytest.fixture(scope="module")
def fs() -> Iterator[Volume]:
    need_root()
    base = make_postgres_dir("ebk-volume-")
    try:
        with loop_ext4(base / "enc.img", base / "mnt", size_mb=160, encrypt=True) as mnt:
            yield Volume(base / "enc.img", mnt, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def keyfile_env(root: Path, *, create: bool = True) -> EbkEnv:
    root.mkdir(parents=True, exist_ok=True)
    keyfile = root / "kek.json"
    if create:
        create_key_file(keyfile)
    return _env(root, f'[keys]\nprovider = "keyfile"\nkeyfile = "{keyfile}"\n', keyfile)


def _env(
    root: Path, keys_toml: str, keyfile: Path | None = None, key_dir: Path | None = None
) -> EbkEnv:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "ebk.toml"
    key_dir = key_dir or root / "volumes"
    config.write_text(f'{keys_toml}\n[volume]\nkey_dir = "{key_dir}"\n\n[log]\nformat = "json"\n')
    return EbkEnv(root, config, root / "repo", keyfile or root / "kek.json")


def status(env: EbkEnv, target: Path) -> dict[str, str]:
    (row,) = json.loads(env.run("volume", "status", str(target), "--json").stdout)
    return dict(row)


def pg_scenario(env: EbkEnv, fs: Volume, vol: Path) -> None:
    """init → PostgreSQL writes → lock (ciphertext, no start, no marker) → unlock → intact."""
    out = env.run("volume", "init", "--type", "fscrypt", str(vol)).stdout
    assert "initialized fscrypt volume" in out and "unlocked" in out
    row = status(env, vol)
    assert row["state"] == "unlocked" and row["type"] == "fscrypt"
    key_object = Path(row["key_object"])
    assert key_object.stat().st_mode & 0o777 == 0o600
    assert json.loads(key_object.read_text())["uuid"] == row["uuid"]
    give_to_postgres(vol)
    pgbase = make_postgres_dir("ebk-volume-pg-")
    cluster = init_cluster(pgbase, data=vol / "data")
    try:
        cluster.psql(
            f"CREATE TABLE marker (t text); INSERT INTO marker "
            f"SELECT '{MARKER}-' || g FROM generate_series(1, 500) g; CHECKPOINT"
        )
        # Running PostgreSQL: lock refuses and changes nothing.
        env.run("volume", "lock", str(vol), expect=8)
        assert cluster.psql("SELECT count(*) FROM marker") == "500"
        assert status(env, vol)["state"] == "unlocked"
        cluster.stop()

        assert env.run("volume", "lock", str(vol)).stdout.startswith("locked:")
        assert status(env, vol)["state"] == "locked"
        names = os.listdir(vol)
        assert "data" not in names and len(names) == 1  # one ciphertext name
        with pytest.raises(subprocess.CalledProcessError):
            cluster.start()  # PostgreSQL cannot start on the locked directory
        os.sync()
        assert MARKER.encode() not in fs.image.read_bytes()  # raw scan of the backing image

        assert env.run("volume", "unlock", str(vol)).stdout.startswith("unlocked:")
        cluster.start()
        assert (
            cluster.psql("SELECT count(*) FROM marker WHERE t LIKE 'ebk-volume-marker-%'") == "500"
        )
        cluster.stop()
        env.run("volume", "lock", str(vol))
    finally:
        cluster.stop()
        shutil.rmtree(pgbase, ignore_errors=True)


def test_key_file_volume_runs_postgres_and_locks(fs: Volume, tmp_path: Path) -> None:
    pg_scenario(keyfile_env(tmp_path / "ebk"), fs, fs.mount / "pg-keyfile")


@pytest.mark.slow
def test_openbao_volume_runs_postgres_and_refuses_without_kms(
    fs: Volume, tmp_path: Path, openbao: Bao
) -> None:
    root = tmp_path / "ebk"
    root.mkdir()
    env = _env(root, vault_toml(openbao))
    vol = fs.mount / "pg-openbao"
    pg_scenario(env, fs, vol)
    doc = json.loads(Path(status(env, vol)["key_object"]).read_text())
    assert doc["slot"]["provider"] == "vault" and doc["slot"]["wrapped"].startswith("dmF1bHQ6")

    # Unreachable KMS: exit 3, the volume stays locked.
    down = _env(
        tmp_path / "down",
        vault_toml(openbao).replace(openbao.address, f"https://127.0.0.1:{free_port()}"),
        key_dir=root / "volumes",
    )
    out = down.run("volume", "unlock", str(vol), expect=3).output
    assert "unreachable" in out
    assert status(env, vol)["state"] == "locked"
    assert os.listdir(vol) != ["data"]
    # ... and init changes nothing: no directory, no key object, no key left in the kernel.
    never = fs.mount / "never"
    objects = set((root / "volumes").iterdir())
    down.run("volume", "init", "--type", "fscrypt", str(never), expect=3)
    assert not never.exists() and set((root / "volumes").iterdir()) == objects

    # Already unlocked: success, and no second request to the KMS.
    env.run("volume", "unlock", str(vol))
    before = len(openbao.transit_requests())
    out = down.run("volume", "unlock", str(vol)).stdout  # the KMS is not even asked
    assert out.startswith("already unlocked:")
    assert len(openbao.transit_requests()) == before
    env.run("volume", "lock", str(vol))


@pytest.mark.slow
@pytest.mark.usefixtures("aws_env")
def test_aws_kms_volume(fs: Volume, tmp_path: Path, volume_kms: tuple[str, str]) -> None:
    endpoint, key_arn = volume_kms
    env = _env(
        tmp_path / "ebk",
        f'[keys]\nprovider = "awskms"\n\n[awskms]\nkey_id = "{key_arn}"\n'
        f'region = "us-east-1"\nendpoint_url = "{endpoint}"\nretries = 0\n',
    )
    vol = fs.mount / "awskms"
    env.run("volume", "init", "--type", "fscrypt", str(vol))
    (vol / "f").write_text("kept")
    env.run("volume", "lock", str(vol))
    row = status(env, vol)
    assert row["provider"] == "awskms" and row["kek_id"] == key_arn
    env.run("volume", "unlock", str(vol))
    assert (vol / "f").read_text() == "kept"
    env.run("volume", "lock", str(vol))


def test_a_swapped_or_edited_key_object_does_not_unlock(fs: Volume, tmp_path: Path) -> None:
    env = keyfile_env(tmp_path / "ebk")
    a, b = fs.mount / "vol-a", fs.mount / "vol-b"
    for vol in (a, b):
        env.run("volume", "init", "--type", "fscrypt", str(vol))
        (vol / "secret.txt").write_text("plaintext")
        env.run("volume", "lock", str(vol))
    obj_a, obj_b = (Path(status(env, v)["key_object"]) for v in (a, b))
    original_b = obj_b.read_bytes()

    # A's object in B's place: it names another volume.
    shutil.copyfile(obj_a, obj_b)
    env.run("volume", "unlock", str(b), expect=3)
    # A's object edited to claim B's uuid: the wrap context binds the uuid, so it fails.
    doc = json.loads(obj_a.read_text())
    doc["uuid"] = status(env, b)["uuid"]
    obj_b.write_text(json.dumps(doc))
    out = env.run("volume", "unlock", str(b), expect=3).output
    assert "does not unwrap" in out or "another" in out
    assert status(env, b)["state"] == "locked"
    assert "secret.txt" not in os.listdir(b)

    obj_b.write_bytes(original_b)
    env.run("volume", "unlock", str(b))
    assert (b / "secret.txt").read_text() == "plaintext"
    env.run("volume", "lock", str(b))


def test_key_object_beside_the_directory(fs: Volume, tmp_path: Path) -> None:
    env = keyfile_env(tmp_path / "ebk")
    env.config_path.write_text(
        env.config_path.read_text().replace("[volume]\n", '[volume]\nkey_placement = "beside"\n')
    )
    vol = fs.mount / "beside"
    env.run("volume", "init", "--type", "fscrypt", str(vol))
    beside = fs.mount / ".beside.ebk-volume.json"
    assert status(env, vol)["key_object"] == str(beside)
    assert beside.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "ebk" / "volumes").exists()
    (vol / "f").write_text("kept")
    env.run("volume", "lock", str(vol))
    env.run("volume", "unlock", str(vol))
    assert (vol / "f").read_text() == "kept"
    env.run("volume", "lock", str(vol))


def test_refusals_change_nothing(fs: Volume, tmp_path: Path) -> None:
    env = keyfile_env(tmp_path / "ebk")
    plain = fs.mount / "plain"
    plain.mkdir()
    for verb in ("unlock", "lock", "status", "rotate"):
        env.run("volume", verb, str(plain), expect=6)
    (fs.base / "not-a-device").write_bytes(bytes(4096))
    env.run("volume", "unlock", str(fs.base / "not-a-device"), expect=6)

    # Not empty: refused, no policy set, no key object written.
    (plain / "file").write_text("x")
    env.run("volume", "init", "--type", "fscrypt", str(plain), expect=2)
    # No key file: refused before the kernel is touched.
    nokey = keyfile_env(tmp_path / "nokey", create=False)
    empty = fs.mount / "empty"
    nokey.run("volume", "init", "--type", "fscrypt", str(empty), expect=3)
    assert not empty.exists()
    env.run("volume", "unlock", str(plain), expect=6)
    assert not (tmp_path / "ebk" / "volumes").exists()

    # fscrypt rotation is a re-encryption into a new directory: explained, refused.
    vol = fs.mount / "rot"
    env.run("volume", "init", "--type", "fscrypt", str(vol))
    out = env.run("volume", "rotate", str(vol), expect=2).output
    assert "new directory" in out
    assert status(env, vol)["state"] == "unlocked"
    env.run("volume", "lock", str(vol))
    env.run("volume", "lock", str(vol))  # idempotent
    assert status(env, vol)["state"] == "locked"
