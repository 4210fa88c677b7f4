"""Verification that must fail, and say where: a damaged chunk, a wrong fingerprint,
a B-tree index damaged in the source before the backup, a forged verification record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ebk.cli import main
from ebk.postgres import fingerprint
from tests.support.refusal import assert_refused
from tests.verify.conftest import VerifySource, make_source


def _backup(source: VerifySource, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(source.env.run("backup", "--type", kind, "--json").stdout)
    return out


def test_corrupted_chunk_fails_integrity_with_exit_5(source: VerifySource) -> None:
    backup = _backup(source, "logical")
    bid = backup["backup_id"]
    dump = next(o for o in backup["objects"] if o["role"] == "dump")
    path = source.env.repo_dir / "backups" / bid / dump["name"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    result = source.env.run("verify", bid, "--level", "integrity", expect=5)
    assert bid in result.stderr and dump["name"] in result.stderr
    assert "chunks fail" in result.stderr
    # The failure is recorded (signed) and the backup is not shown as verified.
    listing = json.loads(source.env.run("list", "--json").stdout)
    entry = next(b for b in listing if b["backup_id"] == bid)
    assert entry["verified"] is None


def test_wrong_fingerprint_fails_restore_naming_the_table(
    source: VerifySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fingerprint.recorded

    def lying(prints: fingerprint.Fingerprints) -> dict[str, Any]:
        doc = real(prints)
        doc["databases"]["shop"]["tables"]["public.orders"]["rows"] = [2999, 2999]
        return doc

    monkeypatch.setattr(fingerprint, "recorded", lying)  # the test-only seam
    backup = _backup(source, "logical")
    monkeypatch.undo()
    result = source.env.run("verify", backup["backup_id"], expect=5)
    assert "fingerprints fail" in result.stderr
    assert "database 'shop' table public.orders: expected 2999 rows, found 3000 rows" in (
        result.stderr
    )
    assert list(source.scratch.iterdir()) == []


@pytest.fixture
def damaged_index(tmp_path: Path) -> Iterator[VerifySource]:
    """A source whose B-tree index orders_item was overwritten while the cluster was stopped."""
    src = make_source(tmp_path / "ebk")
    try:
        rel = src.cluster.psql("SELECT pg_relation_filepath('orders_item')", db="shop")
        src.cluster.psql("CHECKPOINT")
        src.cluster.stop()
        index_file = src.cluster.data_dir / rel
        with index_file.open("r+b") as fh:
            fh.seek(8192 + 8192 - 2048)  # the tuples of the first leaf page
            fh.write(b"\x7f" * 1024)
        src.cluster.start()
        yield src
    finally:
        src.cluster.destroy()
        shutil.rmtree(src.scratch, ignore_errors=True)


def test_btree_corruption_in_the_source_is_found_by_amcheck(damaged_index: VerifySource) -> None:
    backup = _backup(damaged_index, "physical")
    env = damaged_index.env
    env.run("verify", backup["backup_id"], "--level", "integrity")  # the bytes are authentic
    result = env.run("verify", backup["backup_id"], expect=5)
    assert "pg_amcheck fail" in result.stderr
    assert "orders_item" in result.stderr
    assert list(damaged_index.scratch.iterdir()) == []


def test_forged_record_is_refused_and_never_shown_verified(source: VerifySource) -> None:
    """A bucket writer without the writer key copies a passing record onto another backup
    and writes one from scratch: neither is listed as VERIFIED nor selects as verified."""
    good = _backup(source, "logical")
    source.env.run("verify", good["backup_id"], "--level", "integrity")
    victim = _backup(source, "logical")
    records = source.env.repo_dir / "backups" / good["backup_id"] / "verifications"
    genuine = next(records.iterdir())
    doc = json.loads(genuine.read_text())
    doc["backup_id"] = victim["backup_id"]
    target = source.env.repo_dir / "backups" / victim["backup_id"] / "verifications"
    target.mkdir()
    (target / "20300101T000000000000Z-aaaaaa.json").write_text(json.dumps(doc))
    doc["auth"] = {"sig": "ed25519:wk-0000000000000000:AAAA"}
    (target / "20300101T000000000001Z-bbbbbb.json").write_text(json.dumps(doc))

    result = source.env.run("list", "--json")
    listing = {b["backup_id"]: b for b in json.loads(result.stdout)}
    assert listing[good["backup_id"]]["verified"]["level"] == "integrity"
    assert listing[victim["backup_id"]]["verified"] is None
    assert "verification record" in result.stderr  # reported, not silently dropped
    table = source.env.run("list").stdout
    victim_line = next(line for line in table.splitlines() if victim["backup_id"] in line)
    assert " - " in victim_line or victim_line.rstrip().endswith("-")
    # (an earlier test left a damaged backup here: exit 5 is fine, the selection counts)
    unverified = json.loads(
        source.env.run("verify", "unverified", "--level", "integrity", "--json", expect=None).stdout
    )
    assert victim["backup_id"] in [r["backup_id"] for r in unverified]
    assert good["backup_id"] not in [r["backup_id"] for r in unverified]


def test_forged_newer_records_cannot_hide_a_genuine_one(source: VerifySource) -> None:
    """A bucket writer floods a verified backup with forged records named after it: the
    genuine passing record is still found (forged ones do not fill the 20-record window)."""
    good = _backup(source, "logical")
    source.env.run("verify", good["backup_id"], "--level", "integrity")
    records = source.env.repo_dir / "backups" / good["backup_id"] / "verifications"
    doc = json.loads(next(records.iterdir()).read_text())
    doc["auth"] = {"sig": "ed25519:wk-0000000000000000:AAAA"}
    for i in range(25):
        (records / f"20990101T0000000000{i:02d}Z-cccccc.json").write_text(json.dumps(doc))
    result = source.env.run("list", "--json")
    listing = {b["backup_id"]: b for b in json.loads(result.stdout)}
    assert listing[good["backup_id"]]["verified"]["level"] == "integrity"
    assert result.stderr.count("verification record") >= 25  # each forgery reported


def test_unknown_backup_is_refused(source: VerifySource) -> None:
    result = source.env.run("verify", "20990101T000000000000Z-abcdef", expect=9)
    assert_refused(result, 9, mentions="20990101T000000000000Z-abcdef")


@pytest.mark.root
def test_too_little_scratch_space_is_refused_before_anything_is_written(
    source: VerifySource, tmp_path: Path
) -> None:
    """A 1 MiB tmpfs as verify.scratch_dir: exit 10 before the restore, nothing left in it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(small)], check=True
    )
    try:
        source.env.run("backup", "--type", "logical")
        config = tmp_path / "small.toml"
        config.write_text(
            source.env.config_path.read_text().replace(str(source.scratch), str(small))
        )
        result = CliRunner().invoke(main, ["--config", str(config), "verify", "latest"])
        assert_refused(result, 10, mentions=[str(small), "MiB free"])
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
