"""Real mounts: a gocryptfs FUSE mount (also reached through a bind mount and a
symlink), plain ext4 on a loop device, a mount hidden inside a data directory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ebk.config import Config, PostgresConfig, PreflightConfig
from ebk.preflight.inspect import Inspector
from ebk.preflight.model import Status, Target
from ebk.preflight.report import run_preflight
from tests.support.ebkenv import make_env
from tests.support.encrypted_fs import gocryptfs_mount, loop_ext4
from tests.support.refusal import assert_refused

pytestmark = pytest.mark.root


def test_gocryptfs_mount_is_encrypted(tmp_path: Path) -> None:
    with gocryptfs_mount(tmp_path / "g") as plain:
        (plain / "spool").mkdir()
        link = tmp_path / "spool-link"
        link.symlink_to(plain / "spool")
        bind = tmp_path / "bind"
        bind.mkdir()
        subprocess.run(["mount", "--bind", str(plain / "spool"), str(bind)], check=True)
        try:
            env = make_env(
                tmp_path / "ebk",
                None,
                init=False,
                extra=(
                    f'[postgres]\ndata_directory = "{plain}"\n\n[preflight]\n'
                    f'spool_dir = "{link}/new/sub"\nextra_paths = ["{bind}"]\n'
                ),
            )
            result = env.run("preflight", "--json", expect=None)
            # pg_wal does not exist in this fake data directory: unknown, so the run fails
            assert_refused(result, 6)
            report = json.loads(result.stdout)
        finally:
            subprocess.run(["umount", str(bind)], check=False)
    paths = {p["role"]: p for p in report["paths"]}
    data = paths["data_directory"]
    assert data["status"] == "encrypted"
    assert data["fstype"] == "fuse.gocryptfs"
    ev = data["evidence"][0]
    assert ev["layer"] == "gocryptfs"
    assert ev["cipher"] == "contents AES-256-GCM, filenames EME wide-block"
    assert str(tmp_path / "g" / "cipher" / "gocryptfs.conf") in ev["key_location"]
    spool = paths["spool"]  # through a symlink, not created yet
    assert spool["status"] == "encrypted" and spool["resolved"] == str(plain / "spool")
    assert "does not exist yet" in spool["note"]
    extra = paths["extra"]  # a bind mount of a subdirectory of the FUSE mount
    assert extra["status"] == "encrypted", extra
    assert extra["mount_point"] == str(bind)
    assert "(bind of /spool)" in extra["source"]
    assert paths["pg_wal"]["status"] == "unknown"


def test_plain_ext4_on_loop_is_unencrypted(tmp_path: Path) -> None:
    with loop_ext4(tmp_path / "plain.img", tmp_path / "mnt") as mnt:
        verdict = Inspector().inspect(Target("extra", str(mnt)))
    assert verdict.status is Status.UNENCRYPTED
    assert verdict.fstype == "ext4"
    assert verdict.device_stack[0].startswith("loop")
    assert str(tmp_path / "plain.img") in verdict.device_stack[0]
    # the loop device's blocks live in a file on the host disk, which is not encrypted
    assert verdict.evidence[-1].layer == "loop"
    assert "plain.img" in verdict.evidence[-1].detail
    assert "no dm-crypt layer" in verdict.evidence[-1].detail


def test_encrypt_capable_ext4_without_policy(tmp_path: Path) -> None:
    with loop_ext4(tmp_path / "e.img", tmp_path / "mnt", encrypt=True) as mnt:
        verdict = Inspector().inspect(Target("extra", str(mnt)))
    assert verdict.status is Status.UNENCRYPTED
    assert any(
        e.layer == "fscrypt" and "no encryption policy" in e.detail for e in verdict.evidence
    )


def test_unencrypted_mount_inside_an_encrypted_data_directory(tmp_path: Path) -> None:
    with gocryptfs_mount(tmp_path / "g") as plain:
        (plain / "pg_wal").mkdir()
        (plain / "base").mkdir()
        with loop_ext4(tmp_path / "hidden.img", plain / "base"):
            config = Config(
                postgres=PostgresConfig(data_directory=str(plain)),
                preflight=PreflightConfig(cloud=False, kubernetes=False),
            )
            report = run_preflight(config, purpose="backup")
    by_path = {v.target.path: v for v in report.verdicts}
    assert by_path[str(plain)].status is Status.ENCRYPTED
    assert by_path[str(plain / "pg_wal")].status is Status.ENCRYPTED
    hidden = by_path[str(plain / "base")]
    assert hidden.target.label == "mount inside data directory"
    assert hidden.status is Status.UNENCRYPTED and hidden.fstype == "ext4"
    assert not report.passed
