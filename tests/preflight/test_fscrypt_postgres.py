"""PostgreSQL's data directory under a real fscrypt v2 policy (ext4 loop image made
with -O encrypt), pg_wal moved to an unencrypted path, a tablespace on an
unencrypted path: preflight must pass the first and name the other two."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.ebkenv import make_env
from tests.support.encrypted_fs import add_raw_key, loop_ext4, set_v2_policy
from tests.support.needs import need_root
from tests.support.net import free_port
from tests.support.postgres import (
    PgCluster,
    give_to_postgres,
    init_cluster,
    make_postgres_dir,
)

pytestmark = pytest.mark.root


@dataclass
class EncryptedCluster:
    cluster: PgCluster
    data: Path
    wal: Path
    tablespace: Path
    modes: tuple[str, str]


@pytest.fixture(scope="module")
def enc_cluster() -> Iterator[EncryptedCluster]:
    need_root()
    base = make_postgres_dir("ebk-fscrypt-")
    try:
        with loop_ext4(base / "enc.img", base / "mnt", size_mb=160, encrypt=True) as mnt:
            ident = add_raw_key(mnt, os.urandom(64))
            enc_dir = mnt / "pg"
            modes = set_v2_policy(enc_dir, ident)
            give_to_postgres(enc_dir)
            data, wal, ts = enc_dir / "data", base / "wal-plain", base / "ts-plain"
            for d in (ts,):
                d.mkdir()
                give_to_postgres(d)
            cluster = init_cluster(base, data=data, waldir=wal)
            try:
                cluster.psql(f"CREATE TABLESPACE plain_ts LOCATION '{ts}'")
                cluster.psql(
                    "CREATE TABLE t (id int) TABLESPACE plain_ts;"
                    "INSERT INTO t SELECT generate_series(1, 100)"
                )
                yield EncryptedCluster(cluster, data, wal, ts, modes)
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _by_role(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["role"]: p for p in report["paths"]}


def _check_verdicts(report: dict[str, Any], ec: EncryptedCluster) -> None:
    paths = _by_role(report)
    data = paths["data_directory"]
    assert data["status"] == "encrypted", data
    assert data["resolved"] == str(ec.data)
    assert data["fstype"] == "ext4"
    assert data["evidence"][0]["layer"] == "fscrypt v2"
    contents, names = ec.modes  # AES-256-XTS/CTS here; Adiantum where AES modes are missing
    assert data["evidence"][0]["cipher"] == f"contents {contents}, filenames {names}"
    assert "present (unlocked)" in data["evidence"][0]["key_location"]
    # pg_wal is a symlink to an unencrypted directory on the host disk
    wal = paths["pg_wal"]
    assert wal["path"] == str(ec.data / "pg_wal")
    assert wal["resolved"] == str(ec.wal)
    assert wal["status"] == "unencrypted", wal
    assert "symlink" in wal["fix"] and str(ec.wal) in wal["fix"]
    ts = paths["tablespace"]
    assert ts["path"] == str(ec.tablespace) and ts["status"] == "unencrypted", ts
    assert report["passed"] is False


def test_preflight_asks_the_server(enc_cluster: EncryptedCluster, tmp_path: Path) -> None:
    """No data_directory in the config: SHOW data_directory and pg_tablespace are used."""
    env = make_env(tmp_path / "ebk", enc_cluster.cluster, init=False)
    result = env.run("preflight", "--json", expect=6)
    report = json.loads(result.stdout)
    _check_verdicts(report, enc_cluster)
    assert _by_role(report)["tablespace"]["label"] == "tablespace plain_ts"
    table = env.run("preflight", expect=6).stdout
    assert "ENCRYPTED" in table and "fscrypt v2" in table
    assert f"WAL (pg_wal) {enc_cluster.data / 'pg_wal'}: unencrypted" in table


def test_preflight_from_config_alone(enc_cluster: EncryptedCluster, tmp_path: Path) -> None:
    """data_directory configured: nothing connects (the port points at nothing)."""
    env = make_env(
        tmp_path / "ebk",
        None,
        init=False,
        extra=f'[postgres]\nport = {free_port()}\ndata_directory = "{enc_cluster.data}"\n',
    )
    report = json.loads(env.run("preflight", "--json", expect=6).stdout)
    _check_verdicts(report, enc_cluster)
    assert _by_role(report)["tablespace"]["label"].startswith("tablespace oid ")


def test_backup_refuses_when_wal_is_unencrypted(
    enc_cluster: EncryptedCluster, tmp_path: Path
) -> None:
    env = make_env(
        tmp_path / "ebk", enc_cluster.cluster, extra='\n[preflight]\npolicy = "require"\n'
    )
    result = env.run("backup", "--type", "physical", expect=6)
    assert f"WAL (pg_wal) {enc_cluster.data / 'pg_wal'}: unencrypted" in result.output
    assert f"tablespace plain_ts {enc_cluster.tablespace}: unencrypted" in result.output
    assert f"data directory {enc_cluster.data}:" not in result.output  # it passed
    assert "fix:" in result.output
    assert json.loads(env.run("list", "--json").stdout) == []  # nothing was written
