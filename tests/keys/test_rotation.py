"""`ebk keys rotate` with the key file: a new KEK, key objects rewritten, data untouched."""

from __future__ import annotations

import json
from pathlib import Path

from ebk.keys.recovery import write_identity_file
from tests.support.ebkenv import make_env
from tests.support.postgres import PgCluster

CONTENT = "SELECT count(*) || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM t"


def test_keyfile_rotation_rewraps_key_objects_only(pg_cluster: PgCluster, tmp_path: Path) -> None:
    recipient = write_identity_file(tmp_path / "recovery.txt")
    env = make_env(tmp_path / "ebk", pg_cluster)
    text = env.config_path.read_text().replace(
        "[keys]\n", f'[keys]\nrecovery_recipients = ["{recipient}"]\n'
    )
    env.config_path.write_text(text)
    pg_cluster.psql("DROP DATABASE IF EXISTS kms_rot")
    pg_cluster.psql("CREATE DATABASE kms_rot")
    pg_cluster.psql(
        "CREATE TABLE t (id int primary key, v text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g",
        db="kms_rot",
    )
    expected = pg_cluster.psql(CONTENT, db="kms_rot")
    try:
        backup_id = json.loads(
            env.run("backup", "--type", "logical", "--database", "kms_rot", "--json").stdout
        )["backup_id"]
        backup_dir = env.repo_dir / "backups" / backup_id
        data_before = {p.name: p.read_bytes() for p in backup_dir.iterdir() if p.name != "key.json"}
        slots_before = json.loads((backup_dir / "key.json").read_text())["slots"]
        old_kek = slots_before[0]["kek_id"]
        out = env.run("keys", "rotate").output
        new_kek = json.loads(env.keyfile.read_text())["primary"]
        assert new_kek != old_kek and f"{old_kek} -> {new_kek}" in out
        slots_after = json.loads((backup_dir / "key.json").read_text())["slots"]
        assert slots_after[0]["kek_id"] == new_kek
        assert slots_after[0]["wrapped"] != slots_before[0]["wrapped"]
        assert slots_after[1] == slots_before[1]  # the recovery slot is kept as it is
        assert {
            p.name: p.read_bytes() for p in backup_dir.iterdir() if p.name != "key.json"
        } == data_before
        env.run(
            "restore", backup_id, "--to-db", "kms_rot_copy", "--database", "kms_rot", "--create"
        )
        assert pg_cluster.psql(CONTENT, db="kms_rot_copy") == expected
        # a break-glass restore is recorded in the signed key log (the KEK is up here)
        pg_cluster.psql("DROP DATABASE IF EXISTS kms_rot_copy")
        writer = env.run("keys", "writer-key").stdout.strip()
        with (tmp_path / "recovery.txt").open("a") as identity:
            identity.write(f"# writer-key: {writer}\n")
        env.run(
            "restore",
            backup_id,
            "--to-db",
            "kms_rot_copy",
            "--database",
            "kms_rot",
            "--create",
            "--recovery-key",
            str(tmp_path / "recovery.txt"),
        )
        events = json.loads(env.run("keys", "log", "--json").stdout)
        assert events[-1]["kind"] == "restore-with-recovery-key"
        assert events[-1]["details"] == {"backup_id": backup_id, "kind": "logical"}
    finally:
        pg_cluster.psql("DROP DATABASE IF EXISTS kms_rot")
        pg_cluster.psql("DROP DATABASE IF EXISTS kms_rot_copy")
