"""Issue 10, as an attacker with write access to the repository and no keys.

The attacker knows everything public: the recovery recipient (it is a slot's
kek_id), the cluster's system identifier, the formats.  They cannot sign with
the repository's writer key.  Each attack must fail with a clear error and a
pinned exit code, write nothing to a database or directory, delete nothing
real, and say what was found.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ebk.format.stream import COMPRESSION_ZSTD, EncryptingWriter
from ebk.keys.envelope import key_context
from ebk.keys.recovery import parse_recipient, seal_for
from ebk.manifest import Manifest, StoredObject
from ebk.repository.layout import new_backup_id, stream_context
from tests.support.ebkenv import EbkEnv, make_env
from tests.support.postgres import PG_BIN, PgCluster

EVIL_SQL = "CREATE ROLE ebk_attacker SUPERUSER LOGIN;\n\\! touch /tmp/ebk-attack-meta-command-ran\n"


def _recovery_env(tmp_path: Path, cluster: PgCluster) -> tuple[EbkEnv, Path, str]:
    env = make_env(tmp_path / "ebk", cluster)
    identity = tmp_path / "recovery.key"
    out = env.run("keys", "recovery-keygen", "--out", str(identity)).stdout
    recipient = out.split('recovery_recipients = ["')[1].split('"')[0]
    assert "# writer-key: ebkwriter1" in identity.read_text()
    env.config_path.write_text(
        env.config_path.read_text().replace(
            '[keys]\nprovider = "keyfile"\n',
            f'[keys]\nprovider = "keyfile"\nrecovery_recipients = ["{recipient}"]\n',
        )
    )
    return env, identity, recipient


def _encrypt(dek: bytes, dek_id: str, backup_id: str, name: str, payload: bytes) -> bytes:
    out = io.BytesIO()
    writer = EncryptingWriter(
        out,
        dek,
        key_id=dek_id,
        associated_data=stream_context(backup_id, name),
        compression=COMPRESSION_ZSTD,
    )
    writer.write(payload)
    writer.close()
    return out.getvalue()


def forge_key_object(
    env: EbkEnv, recipient: str, system_identifier: str, when: datetime
) -> tuple[str, bytes, str, Path]:
    """A new backup's key object with a data key of the attacker's choice, wrapped for the
    public recovery recipient: (backup id, DEK, DEK id, the backup's folder)."""
    backup_id = new_backup_id(when)
    dek, dek_id = secrets.token_bytes(32), f"dek-{secrets.token_hex(8)}"
    context = key_context(backup_id, system_identifier, dek_id)
    slot = seal_for(parse_recipient(recipient, where="attack"), dek, context)
    folder = env.repo_dir / "backups" / backup_id
    folder.mkdir(parents=True)
    (folder / "key.json").write_text(
        json.dumps(
            {
                "format": "ebk-key-object",
                "version": 1,
                "backup_id": backup_id,
                "dek_id": dek_id,
                "context": context,
                "slots": [
                    {
                        "provider": "recovery",
                        "kek_id": recipient,
                        "wrapped": base64.b64encode(slot).decode(),
                    }
                ],
            }
        )
    )
    return backup_id, dek, dek_id, folder


def forge_logical_backup(
    env: EbkEnv, recipient: str, system_identifier: str, dump: bytes, *, when: datetime
) -> str:
    """What finding 1 did: a complete, self-consistent backup for the public recipient."""
    backup_id, dek, dek_id, folder = forge_key_object(env, recipient, system_identifier, when)
    objects = []
    for name, role, database, payload in (
        ("globals.sql.ebk", "globals", None, EVIL_SQL.encode()),
        ("dump-0001.ebk", "dump", "app", dump),
    ):
        blob = _encrypt(dek, dek_id, backup_id, name, payload)
        (folder / name).write_bytes(blob)
        objects.append(
            StoredObject(
                name,
                role,
                len(payload),
                len(blob),
                hashlib.sha256(blob).hexdigest(),
                database=database,
            )
        )
    manifest = Manifest(
        backup_id=backup_id,
        kind="logical",
        ebk_version="0.2.0",
        system_identifier=system_identifier,
        server_version="15.18",
        server_version_num=150018,
        start_time=when.isoformat(),
        stop_time=when.isoformat(),
        dek_id=dek_id,
        key_slots=[f"recovery/{recipient}"],
        objects=objects,
        databases=["app"],
    )
    manifest.seal(dek)  # a valid MAC: the attacker chose the DEK
    manifest.auth["sig"] = "ed25519:wk-0000000000000000:" + base64.b64encode(bytes(64)).decode()
    (env.repo_dir / "manifests" / f"{backup_id}.json").write_bytes(manifest.to_json())
    return backup_id


@pytest.fixture
def attacker_dump(pg_cluster: PgCluster) -> bytes:
    pg_cluster.psql("DROP DATABASE IF EXISTS evil_src")
    pg_cluster.psql("CREATE DATABASE evil_src")
    pg_cluster.psql("CREATE TABLE pwned AS SELECT 1 AS x", db="evil_src")
    return subprocess.run(
        [
            str(PG_BIN / "pg_dump"),
            "-Fc",
            "-h",
            pg_cluster.host,
            "-p",
            str(pg_cluster.port),
            "-U",
            "postgres",
            "evil_src",
        ],
        check=True,
        capture_output=True,
    ).stdout


def test_a_forged_backup_never_restores_through_the_recovery_key(
    tmp_path: Path, pg_cluster: PgCluster, attacker_dump: bytes
) -> None:
    env, identity, recipient = _recovery_env(tmp_path, pg_cluster)
    real = json.loads(
        env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
    )
    forged = forge_logical_backup(
        env,
        recipient,
        real["system_identifier"],
        attacker_dump,
        when=datetime.now(UTC) + timedelta(days=1),
    )
    marker = Path("/tmp/ebk-attack-meta-command-ran")
    marker.unlink(missing_ok=True)

    # Named explicitly, with only the recovery key: refused, nothing applied.
    result = env.run(
        "restore",
        forged,
        "--to-db",
        "victim",
        "--create",
        "--with-globals",
        "--recovery-key",
        str(identity),
        expect=5,
    )
    assert "not signed by this repository's writer key" in result.stderr
    # As `latest`: the forgery is newer than every real backup, so latest is refused.
    result = env.run(
        "restore",
        "latest",
        "--to-db",
        "victim",
        "--create",
        "--with-globals",
        "--recovery-key",
        str(identity),
        expect=5,
    )
    assert "refusing to choose `latest`" in result.stderr and forged in result.stderr
    assert pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'victim'") == "0"
    assert pg_cluster.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'ebk_attacker'") == "0"
    assert not marker.exists()
    # The forgery is reported, never listed; the real backup restores by id with the key.
    listed = env.run("list", "--json")
    assert [b["backup_id"] for b in json.loads(listed.stdout)] == [real["backup_id"]]
    assert forged in listed.stderr
    env.run(
        "restore",
        real["backup_id"],
        "--to-db",
        "recovered",
        "--create",
        "--recovery-key",
        str(identity),
    )
    assert pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'recovered'") == "1"


def test_a_recovery_restore_without_a_pinned_writer_key_is_refused(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    env, identity, _ = _recovery_env(tmp_path, pg_cluster)
    real = json.loads(
        env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
    )
    bare = tmp_path / "bare.key"
    bare.write_text(
        "".join(
            line + "\n" for line in identity.read_text().splitlines() if "writer-key" not in line
        )
    )
    bare.chmod(0o600)
    result = env.run(
        "restore",
        real["backup_id"],
        "--to-db",
        "never",
        "--create",
        "--recovery-key",
        str(bare),
        expect=2,
    )
    assert "writer public key" in result.stderr


def test_planted_manifests_neither_count_nor_get_deleted_by_retention(
    ebk_env: EbkEnv,
) -> None:
    real = [
        json.loads(
            ebk_env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
        )
        for _ in range(2)
    ]
    template = json.loads(
        (ebk_env.repo_dir / "manifests" / f"{real[0]['backup_id']}.json").read_text()
    )
    planted = []
    for day in range(30):  # finding 2: future times, the real cluster, no keys
        when = datetime.now(UTC) + timedelta(days=day + 1)
        backup_id = new_backup_id(when)
        doc = dict(
            template, backup_id=backup_id, start_time=when.isoformat(), stop_time=when.isoformat()
        )
        (ebk_env.repo_dir / "manifests" / f"{backup_id}.json").write_text(json.dumps(doc))
        planted.append(backup_id)
    ebk_env.config_path.write_text(
        ebk_env.config_path.read_text()
        + (
            "\n[retention]\nkeep_last = 1\nkeep_daily = 1\nkeep_weekly = 1\nkeep_monthly = 1\n"
            'min_age = "0s"\n'
        )
    )
    result = ebk_env.run("retention", "--json")
    report = json.loads(result.stdout)
    assert {d["backup_id"] for d in report["decisions"]} == {b["backup_id"] for b in real}
    # Only real backups were weighed: the newest real one is kept, the planted ones
    # were never counted (else they would have filled every window) nor deleted.
    assert real[-1]["backup_id"] not in report["deleted"]
    assert all((ebk_env.repo_dir / "manifests" / f"{p}.json").exists() for p in planted)
    assert [b["backup_id"] for b in json.loads(ebk_env.run("list", "--json").stdout)] == [
        real[-1]["backup_id"]
    ]


def test_an_edited_newest_manifest_blocks_latest(ebk_env: EbkEnv) -> None:
    """Finding 3, edited: the newest manifest's kind is changed to roll `latest` back."""
    older, newest = (
        json.loads(
            ebk_env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
        )["backup_id"]
        for _ in range(2)
    )
    path = ebk_env.repo_dir / "manifests" / f"{newest}.json"
    doc = json.loads(path.read_text())
    doc["kind"] = "physical"
    path.write_text(json.dumps(doc))
    result = ebk_env.run("restore", "latest", "--to-db", "never", "--create", expect=5)
    assert "refusing to choose `latest`" in result.stderr and newest in result.stderr
    # Named explicitly, the older backup still restores.
    ebk_env.run("restore", older, "--to-db", "older_copy", "--create")


def test_a_backup_copied_from_another_cluster_sharing_the_kek_is_refused(
    tmp_path: Path, pg_cluster: PgCluster, fresh_cluster: PgCluster
) -> None:
    """Finding 5: one key file for two clusters; B's backup copied into A's repository."""
    import shutil

    a = make_env(tmp_path / "a", pg_cluster)
    b = make_env(tmp_path / "b", fresh_cluster, init=False)
    shutil.copy(a.keyfile, b.keyfile)  # the shared KEK
    b.run("init", "--repository-only")
    mine = json.loads(
        a.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
    )["backup_id"]
    theirs = json.loads(
        b.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
    )["backup_id"]
    shutil.copytree(b.repo_dir / "backups" / theirs, a.repo_dir / "backups" / theirs)
    shutil.copy(b.repo_dir / "manifests" / f"{theirs}.json", a.repo_dir / "manifests")
    listed = a.run("list", "--json")
    assert [x["backup_id"] for x in json.loads(listed.stdout)] == [mine]
    assert theirs in listed.stderr and "not signed by this repository's writer key" in (
        listed.stderr
    )
    result = a.run("restore", theirs, "--to-db", "never", "--create", expect=5)
    assert "not signed by this repository's writer key" in result.stderr
    # `latest` is refused too: B's backup claims to be newer than A's.
    assert (
        "refusing to choose `latest`"
        in a.run("restore", "latest", "--to-db", "never", "--create", expect=5).stderr
    )
    assert pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'never'") == "0"


def test_a_deleted_newest_manifest_blocks_latest_until_accepted(ebk_env: EbkEnv) -> None:
    """Finding 3, deleted: the attacker removes the newest manifest to roll `latest` back."""
    older, newest = (
        json.loads(
            ebk_env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
        )["backup_id"]
        for _ in range(2)
    )
    ebk_env.run("list")  # this host has now seen `newest`
    (ebk_env.repo_dir / "manifests" / f"{newest}.json").unlink()
    listed = ebk_env.run("list", "--json")
    assert [b["backup_id"] for b in json.loads(listed.stdout)] == [older]
    assert f"backup {newest}, the newest this host has seen, is gone" in listed.stderr
    result = ebk_env.run("restore", "latest", "--to-db", "rolled_back", "--create", expect=5)
    assert "refusing to choose `latest`" in result.stderr and newest in result.stderr
    # The operator decides: accept the deletion, then `latest` is the older one again.
    ebk_env.run("repo", "check", "--accept-missing-newest")
    assert json.loads(ebk_env.run("show", "latest", "--json").stdout)["backup_id"] == older


def test_deleting_the_newest_with_ebk_is_not_a_rollback(ebk_env: EbkEnv) -> None:
    older, newest = (
        json.loads(
            ebk_env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
        )["backup_id"]
        for _ in range(2)
    )
    ebk_env.run("list")
    ebk_env.run("delete", newest, "--yes")
    assert json.loads(ebk_env.run("show", "latest", "--json").stdout)["backup_id"] == older


def test_a_forged_physical_backup_writes_nothing_anywhere(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    """Finding 1, physical variant: a forged tablespace location outside the target and a
    postgresql.auto.conf with an archive_command; refused before a byte is written."""
    import tarfile

    env, identity, recipient = _recovery_env(tmp_path, pg_cluster)
    real = json.loads(
        env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
    )
    when = datetime.now(UTC) + timedelta(days=1)
    backup_id, dek, dek_id, folder = forge_key_object(
        env, recipient, real["system_identifier"], when
    )
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        conf = b"archive_mode = on\narchive_command = 'touch /tmp/ebk-attack-archive'\n"
        info = tarfile.TarInfo("postgresql.auto.conf")
        info.size = len(conf)
        tar.addfile(info, io.BytesIO(conf))
    outside = tmp_path / "outside-the-target"
    objects = []
    for name, role, extra in (
        ("base.tar.ebk", "base", {}),
        (
            "16384.tar.ebk",
            "tablespace",
            {"tablespace_oid": "16384", "tablespace_location": str(outside)},
        ),
    ):
        blob = _encrypt(dek, dek_id, backup_id, name, archive.getvalue())
        (folder / name).write_bytes(blob)
        objects.append(
            StoredObject(
                name,
                role,
                len(archive.getvalue()),
                len(blob),
                hashlib.sha256(blob).hexdigest(),
                **extra,
            )
        )
    manifest = Manifest(
        backup_id=backup_id,
        kind="physical",
        ebk_version="0.2.0",
        system_identifier=real["system_identifier"],
        server_version="15.18",
        start_time=when.isoformat(),
        stop_time=when.isoformat(),
        dek_id=dek_id,
        key_slots=[f"recovery/{recipient}"],
        objects=objects,
    )
    manifest.seal(dek)
    (env.repo_dir / "manifests" / f"{backup_id}.json").write_bytes(manifest.to_json())
    target = tmp_path / "target"
    for ref in (backup_id, "latest"):
        result = env.run(
            "restore", ref, "--to", str(target), "--recovery-key", str(identity), expect=5
        )
        assert "writer" in result.stderr or "refusing to choose `latest`" in result.stderr
    assert not target.exists() and not outside.exists()
