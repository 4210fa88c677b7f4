"""The KEK lifecycle with the key file: status, rotate, rewrap, retire, the signed key log.

Backups here are synthetic (tests/keys/synthetic.py: signed manifest + key object, no
payload): what the lifecycle touches is the key object, and each test proves every
data key still opens.  tests/keys/test_rotation.py restores real backups.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from ebk.keys.envelope import open_data_key
from ebk.keys.keyfile import KeyFileProvider, create_key_file
from ebk.runtime import Runtime
from tests.keys.synthetic import add_backups
from tests.support.ebkenv import EbkEnv, make_env


def runtime(env: EbkEnv) -> Runtime:
    return Runtime.load(env.config_path)


def all_open(env: EbkEnv, deks: dict[str, bytes]) -> None:
    rt = runtime(env)
    for backup_id, dek in deks.items():
        key_object = rt.repository.read_key_object(backup_id)
        assert open_data_key(key_object, rt.key_providers, backup_id=backup_id) == dek


def status(env: EbkEnv, expect: int = 0) -> dict[str, object]:
    return json.loads(env.run("keys", "status", "--json", expect=expect).stdout)


def test_rotate_rewrap_retire_with_the_key_file(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None, extra='[preflight]\npolicy = "off"\n')
    deks = add_backups(runtime(env), 6)
    at_init = tmp_path / "kek-at-init.json"
    shutil.copy2(env.keyfile, at_init)
    first = status(env)
    old = first["current_version"]
    assert first["ok"] and first["versions"][0]["backups"] == 6
    assert first["versions"][0]["writer_key"] and first["pending_rewrap"] == 0
    assert 0 <= first["age_seconds"] < 600 and not first["overdue"]

    out = env.run("keys", "rotate").output
    after = status(env)
    new = after["current_version"]
    assert new != old and f"{old} -> {new}" in out and "re-wrapped 6 backup(s)" in out
    counts = {v["version"]: v["backups"] for v in after["versions"]}
    assert counts == {old: 0, new: 6}
    # default keys.retire_after = 30d: the old version waits
    assert not after["versions"][0]["retirable"] and after["versions"][0]["retirable_after"]
    all_open(env, deks)
    # a re-run has nothing to do (idempotent)
    assert "re-wrapped 0 backup(s)" in env.run("keys", "rewrap").output

    env.config_path.write_text(
        env.config_path.read_text().replace("[keys]\n", '[keys]\nretire_after = "0s"\n')
    )
    assert status(env)["versions"][0]["retirable"]
    dry = env.run("keys", "retire").output
    assert "needs --force" in dry or f"would remove KEK {old}" in dry
    assert old in json.loads(env.keyfile.read_text())["keys"][0]["id"]
    env.run("keys", "retire", "--force", "--yes")
    assert [k["id"] for k in json.loads(env.keyfile.read_text())["keys"]] == [new]
    all_open(env, deks)

    # the key file as it was at `ebk init` does not open re-wrapped backups: a true hint
    env.config_path.write_text(env.config_path.read_text().replace(str(env.keyfile), str(at_init)))
    some = next(iter(deks))
    restore = env.run("restore", some, "--to-db", "x", "--create", expect=3)
    assert new in restore.output and "current key file" in restore.output
    assert "that was in use when the backup was taken" not in restore.output

    env.config_path.write_text(env.config_path.read_text().replace(str(at_init), str(env.keyfile)))
    events = json.loads(env.run("keys", "log", "--json").stdout)
    assert [e["kind"] for e in events] == ["rotate", "rewrap", "rewrap", "retire"]
    assert events[1]["details"]["from"] == {old: 6} and events[1]["details"]["to"] == new
    assert events[3]["details"]["versions"] == [old]
    secrets_ = [k["key"] for k in json.loads(at_init.read_text())["keys"]]
    secrets_ += [k["key"] for k in json.loads(env.keyfile.read_text())["keys"]]
    assert not any(s in json.dumps(events) for s in secrets_)  # never key material


def test_retire_before_rewrap_strands_backups_and_names_the_version(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None, extra='[preflight]\npolicy = "off"\n')
    deks = add_backups(runtime(env), 3)
    old = status(env)["current_version"]
    writer = env.run("keys", "writer-key").stdout.strip()
    env.run("keys", "rotate", "--no-rewrap")
    pending = status(env)
    assert pending["pending_rewrap"] == 3 and pending["ok"]
    # ebk refuses to retire a version backups depend on ...
    refused = env.run("keys", "retire", str(old), "--force", "--yes", expect=3)
    assert "3 backup(s) are still wrapped under it" in refused.output
    # ... so take it out of the file by hand, as a premature retirement would
    doc = json.loads(env.keyfile.read_text())
    doc["keys"] = [k for k in doc["keys"] if k["id"] != old]
    env.keyfile.write_text(json.dumps(doc))
    unpinned = env.run("keys", "status", expect=3)
    assert f"writer key is wrapped only under {old}" in unpinned.output
    # with the writer key pinned, listing works and status names the stranded backups
    text = env.config_path.read_text()
    env.config_path.write_text(
        text.replace("[repository]\n", f'[repository]\nwriter_keys = ["{writer}"]\n', 1)
    )
    broken = env.run("keys", "status", "--json", expect=3)
    report = json.loads(broken.stdout)
    assert not report["ok"] and len(report["stranded"]) == 3
    assert report["unknown_versions"] == {old: 3}
    some = next(iter(deks))
    failed = env.run("restore", some, "--to-db", "x", "--create", expect=3)
    assert f"wrapped by KEK {old}" in failed.output


def test_rotation_keeps_mode_owner_and_symlink(tmp_path: Path) -> None:
    real_dir = tmp_path / "secrets"
    real_dir.mkdir(mode=0o700)
    real = real_dir / "kek.json"
    first = create_key_file(real)
    os.chmod(real, 0o400)
    os.chown(real, os.geteuid(), 4321)
    link = tmp_path / "kek-link.json"
    link.symlink_to(real)
    provider = KeyFileProvider(link)
    new = provider.rotate()
    assert link.is_symlink() and os.readlink(link) == str(real)
    st = real.stat()
    assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_gid == 4321
    doc = json.loads(real.read_text())
    assert [k["id"] for k in doc["keys"]] == [first, new] and doc["primary"] == new
    assert all(k["created"] for k in doc["keys"])
    assert not [p for p in real_dir.iterdir() if p.name.startswith(".")]  # no temp left


def test_forged_key_events_are_never_listed(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None, extra='[preflight]\npolicy = "off"\n')
    add_backups(runtime(env), 1)
    env.run("keys", "rotate")
    events_dir = env.repo_dir / "keyevents"
    genuine = sorted(events_dir.iterdir())
    forged = json.loads(genuine[0].read_text())
    forged["details"]["new"] = "kek-attacker"
    (events_dir / "20990101T000000000000Z-deadbeef.json").write_text(json.dumps(forged))
    (events_dir / "junk.json").write_bytes(b"x" * 20000)
    result = env.run("keys", "log", "--json")
    events = json.loads(result.stdout)
    assert len(events) == 2 and "kek-attacker" not in result.stdout
    assert result.stderr.count("unauthenticated key event") == 2


def test_a_damaged_key_object_does_not_stop_the_rewrap(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None, extra='[preflight]\npolicy = "off"\n')
    deks = add_backups(runtime(env), 4)
    victim = sorted(deks)[1]
    key_file = env.repo_dir / "backups" / victim / "key.json"
    doc = json.loads(key_file.read_text())
    doc["slots"][0]["wrapped"] = doc["slots"][0]["wrapped"][:-8] + "AAAAAAA="
    key_file.write_text(json.dumps(doc))
    old = status(env)["current_version"]
    result = env.run("keys", "rotate", expect=3)
    assert "re-wrapped 3 backup(s)" in result.output and f"backup {victim}" in result.output
    after = status(env)
    assert {v["version"]: v["backups"] for v in after["versions"]}[old] == 1
    del deks[victim]
    all_open(env, deks)
    exposed = json.loads(env.run("keys", "status", "--exposed", str(old), "--json").stdout)
    assert sorted(b["backup_id"] for b in exposed) == sorted([*deks, victim])
    event = json.loads(env.run("keys", "log", "--json").stdout)[-1]
    assert event["details"]["failed"] == [victim] and not event["details"]["complete"]


def test_a_loaded_key_file_wraps_under_a_rotation_made_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek.json"
    create_key_file(path)
    daemon_view = KeyFileProvider(path)  # e.g. the daemon, loaded before the rotation
    new = KeyFileProvider(path).rotate()  # `ebk keys rotate` in another process
    ctx = {"backup_id": "b", "cluster": "c", "dek_id": "d"}
    assert daemon_view.wrap(b"k" * 32, ctx).kek_id == new


def test_wal_data_keys_follow_rotation_and_hold_back_retirement(tmp_path: Path) -> None:
    """The WAL archive's data keys (issue 13) are KEK-wrapped too: `keys status` counts them,
    `keys rewrap` moves (and re-signs) them, and a version they need is never retired."""
    from ebk.app.wal import WalKeyring

    env = make_env(tmp_path / "ebk", None, extra='[preflight]\npolicy = "off"\n')
    add_backups(runtime(env), 2)
    keyring = WalKeyring(runtime(env))
    wal_key = keyring.for_push(1)[0]
    dek = keyring.for_read(wal_key)
    old = status(env)["current_version"]
    assert status(env)["versions"][0]["wal_keys"] == 1

    env.run("keys", "rotate", "--no-rewrap")
    env.config_path.write_text(
        env.config_path.read_text().replace("[keys]\n", '[keys]\nretire_after = "0s"\n')
    )
    env.run("keys", "rewrap")  # backups and the writer key move; so must the WAL key
    after = status(env)
    counts = {v["version"]: (v["backups"], v["wal_keys"]) for v in after["versions"]}
    assert counts[old] == (0, 0) and counts[after["current_version"]] == (2, 1)
    # the re-wrapped WAL key object still verifies (re-signed) and opens to the same key
    assert WalKeyring(runtime(env)).for_read(wal_key) == dek
    env.run("keys", "retire", "--force", "--yes")
    assert WalKeyring(runtime(env)).for_read(wal_key) == dek


def test_a_version_a_wal_key_needs_is_not_retired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ebk.app import keylife
    from ebk.app.wal import WalKeyring

    env = make_env(tmp_path / "ebk", None, extra='[preflight]\npolicy = "off"\n')
    WalKeyring(runtime(env)).for_push(1)
    old = status(env)["current_version"]
    env.run("keys", "rotate", "--no-rewrap")
    # A rewrap interrupted after the writer key but before the WAL keys (simulated in
    # process): the old version still holds a WAL key and must not be retired.
    monkeypatch.setattr(keylife, "rewrap_wal_keys", lambda *a, **k: (0, {}))
    keylife.rewrap_all_backups(runtime(env))
    refused = env.run("keys", "retire", str(old), "--force", "--yes", expect=3)
    assert "1 WAL data key(s) are still wrapped under it" in refused.output
