"""WAL objects and WAL data keys, without PostgreSQL: binding, digests, rotation, forgery."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ebk.app.wal import WalKeyring, fetch_authenticated, next_segments, push_wal
from ebk.config import load_config
from ebk.errors import IntegrityError
from ebk.format.walobject import is_wal_name, open_wal, seal_wal
from ebk.runtime import Runtime
from tests.support.ebkenv import make_env

SEG = "000000010000000A000000FF"


def test_a_wal_object_opens_only_under_its_own_name_and_repository() -> None:
    key = os.urandom(32)
    data = os.urandom(1000) + bytes(200_000)
    sealed = seal_wal(data, key, key_id="walk-x", repository_id="repo-a", name=SEG, level=3)
    assert open_wal(sealed, key, repository_id="repo-a", name=SEG).data == data
    for repo, name in (("repo-b", SEG), ("repo-a", "000000010000000A000000FE"),
                       ("repo-a", "000000020000000A000000FF")):  # fmt: skip
        with pytest.raises(IntegrityError, match="first chunk"):
            open_wal(sealed, key, repository_id=repo, name=name)
    with pytest.raises(IntegrityError):
        open_wal(sealed[:-1], key, repository_id="repo-a", name=SEG)


def test_wal_names_and_the_next_segments() -> None:
    for ok in (SEG, f"{SEG}.partial", "00000002.history", f"{SEG}.00000028.backup"):
        assert is_wal_name(ok)
    for bad in ("../etc/passwd", "RECOVERYXLOG", f"{SEG}x", "0000000z.history"):
        assert not is_wal_name(bad)
    assert next_segments(SEG, 16 * 1024 * 1024, 2) == [
        "000000010000000B00000000",
        "000000010000000B00000001",
    ]


def _runtime(tmp_path: Path, extra: str = "") -> Runtime:
    env = make_env(tmp_path / "ebk", None, extra=extra)
    return Runtime(load_config(env.config_path))


def test_one_wal_key_for_many_segments_then_rotation_by_volume_and_age(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, "[wal]\nkey_rotation_bytes = 16777216\n")
    now = [datetime(2026, 11, 30, tzinfo=UTC)]
    keyring = WalKeyring(runtime, clock=lambda: now[0])
    first, _ = keyring.for_push(8 * 1024 * 1024)
    assert keyring.for_push(8 * 1024 * 1024)[0] == first  # 16 MiB: still the same key
    second, _ = keyring.for_push(1)  # volume exhausted
    assert second != first
    now[0] += timedelta(days=1, seconds=1)
    third, _ = keyring.for_push(1)  # too old
    assert third not in (first, second)
    assert keyring.calls == 3  # one wrap per key, never per segment
    # another process reuses the current key instead of creating one
    other = WalKeyring(runtime, clock=lambda: now[0])
    assert other.for_push(1)[0] == third


def test_a_forged_wal_key_object_is_never_used(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    keyring = WalKeyring(runtime)
    wal = tmp_path / SEG
    wal.write_bytes(os.urandom(4096))
    push_wal(keyring, wal, runtime.config.wal)
    key_file = next((tmp_path / "ebk" / "repo" / "wal" / "keys").iterdir())
    doc = json.loads(key_file.read_bytes())
    doc["created"] = "2030-01-01T00:00:00+00:00"  # any change breaks the writer signature
    key_file.write_text(json.dumps(doc))
    fresh = WalKeyring(Runtime(runtime.config))
    with pytest.raises(IntegrityError, match="signature does not verify"):
        fetch_authenticated(fresh, SEG)


def test_wal_commands_on_an_empty_archive(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None)
    fetched = env.run("wal-fetch", SEG, str(tmp_path / "RECOVERYXLOG"), expect=None)
    assert fetched.exit_code == 1 and fetched.output == ""  # quietly: end of the archive
    assert not (tmp_path / "RECOVERYXLOG").exists()
    env.run("wal", "check", expect=9)
    env.run("wal-push", str(tmp_path / "not-a-wal-name"), expect=2)
