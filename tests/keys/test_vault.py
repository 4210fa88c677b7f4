"""Vault Transit against a real OpenBao dev server (TLS, file audit device counting requests)."""

from __future__ import annotations

import json
import secrets
import socket
from pathlib import Path

import pytest

from ebk.config import VaultConfig
from ebk.errors import KeyAccessDenied, KeyProviderUnavailable, WrongKey
from ebk.keys.envelope import KeyObject, rewrap_key_object
from ebk.keys.vault import VaultTransitProvider
from tests.support.ebkenv import kms_env, stored_files
from tests.support.net import free_port
from tests.support.openbao import Bao, vault_toml
from tests.support.postgres import PgCluster, start_existing

pytestmark = pytest.mark.slow

CTX = {"backup_id": "20261128T000000Z-aaaaaa", "cluster": "7300000000000000001", "dek_id": "dek-1"}
CONTENT = "SELECT count(*) || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM {table}"


def provider(
    bao: Bao, key: str = "ebk", *, token: str | None = None, ca: bool = True
) -> VaultTransitProvider:
    cfg = VaultConfig(
        address=bao.address,
        transit_key=key,
        token_file=str(bao.token_file(token)),
        ca_cert=str(bao.ca_cert) if ca else "",
        timeout=5.0,
        retries=0,
    )
    return VaultTransitProvider(cfg, environ={})


def make_db(cluster: PgCluster, name: str, rows: int) -> str:
    cluster.psql(f"DROP DATABASE IF EXISTS {name}")
    cluster.psql(f"CREATE DATABASE {name}")
    cluster.psql(
        "CREATE TABLE t (id int primary key, v text);"
        f"INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text) "
        f"FROM generate_series(1, {rows}) g",
        db=name,
    )
    return cluster.psql(CONTENT.format(table="t"), db=name)


def drop_dbs(cluster: PgCluster, *names: str) -> None:
    for name in names:
        cluster.psql(f"DROP DATABASE IF EXISTS {name}")


def test_round_trip_wrong_context_and_wrong_key(openbao: Bao) -> None:
    vault = provider(openbao)
    dek = secrets.token_bytes(32)
    slot = vault.wrap(dek, CTX)
    assert slot.provider == "vault" and slot.kek_id == "transit/ebk:v1"
    assert slot.ciphertext.startswith(b"vault:v1:") and dek not in slot.ciphertext
    assert vault.owns(slot)
    assert vault.unwrap(slot, CTX) == dek
    with pytest.raises(WrongKey, match="another backup"):
        vault.unwrap(slot, {**CTX, "backup_id": "20261128T000001Z-bbbbbb"})
    with pytest.raises(WrongKey):
        vault.unwrap(slot, {**CTX, "cluster": "7300000000000000002"})
    other = provider(openbao, "other")
    assert not other.owns(slot)
    with pytest.raises(WrongKey):
        other.unwrap(slot, CTX)
    with pytest.raises(KeyAccessDenied, match="does not exist"):
        provider(openbao, "missing").unwrap(slot, CTX)


def test_least_privilege_policy_is_enough_and_denies_the_rest(openbao: Bao) -> None:
    token = openbao.bao("token", "create", "-policy=ebk", "-field=token").strip()
    vault = provider(openbao, token=token)
    dek = secrets.token_bytes(32)
    slot = vault.wrap(dek, CTX)
    assert vault.unwrap(vault.rewrap(slot, CTX), CTX) == dek
    with pytest.raises(KeyAccessDenied, match="denied"):
        provider(openbao, "other", token=token).wrap(dek, CTX)
    nobody = openbao.bao("token", "create", "-policy=default", "-field=token").strip()
    with pytest.raises(KeyAccessDenied, match="denied"):
        provider(openbao, token=nobody).unwrap(slot, CTX)


def test_rewrap_after_rotation_never_exports_the_key(openbao: Bao) -> None:
    openbao.bao("write", "-f", "transit/keys/rot", "derived=true")
    vault = provider(openbao, "rot")
    dek = secrets.token_bytes(32)
    key_object = KeyObject(CTX["backup_id"], CTX["dek_id"], dict(CTX), [vault.wrap(dek, CTX)])
    assert key_object.slots[0].kek_id == "transit/rot:v1"
    openbao.bao("write", "-f", "transit/keys/rot/rotate")
    before = len(openbao.transit_requests())
    rewrapped = rewrap_key_object(key_object, {"vault": vault})
    assert openbao.transit_requests()[before:] == ["transit/rewrap/rot"]
    assert rewrapped.slots[0].kek_id == "transit/rot:v2"
    assert rewrapped.slots[0].ciphertext.startswith(b"vault:v2:")
    assert vault.unwrap(rewrapped.slots[0], CTX) == dek
    openbao.bao("write", "transit/keys/rot/config", "min_decryption_version=2")
    with pytest.raises(
        KeyAccessDenied, match=r"wrapped under transit/rot:v1: that key version is retired"
    ):
        vault.unwrap(key_object.slots[0], CTX)


def test_tls_without_the_ca_is_refused(openbao: Bao) -> None:
    with pytest.raises(KeyProviderUnavailable, match="TLS verification"):
        provider(openbao, ca=False).wrap(secrets.token_bytes(32), CTX)


def test_keys_check_json_and_non_derived_key(openbao: Bao, tmp_path: Path) -> None:
    env = kms_env(tmp_path / "ok", None, vault_toml(openbao))
    doc = json.loads(env.run("keys", "check", "--json").stdout)
    assert doc["ok"] is True
    assert doc["providers"][0]["kek_id"] == "transit/ebk:v1"
    assert doc["providers"][0]["check"] == "round trip ok, context bound"
    # a Transit key without derived=true silently ignores the context: refused
    bad = kms_env(tmp_path / "plain", None, vault_toml(openbao, key="plain"))
    result = bad.run("keys", "check", "--json", expect=3)
    assert json.loads(result.stdout)["ok"] is False
    assert "not bound to their backup" in result.output and "derived=true" in result.output


def test_physical_round_trip_with_approle(
    openbao: Bao, pg_cluster: PgCluster, postgres_dir: Path, tmp_path: Path
) -> None:
    """AppRole login with only the documented least-privilege policy; a full physical cycle."""
    openbao.bao("auth", "enable", "approle")
    openbao.bao("write", "auth/approle/role/ebk", "token_policies=ebk", "token_ttl=10m")
    role_id = openbao.bao("read", "-field=role_id", "auth/approle/role/ebk/role-id").strip()
    secret_id = openbao.bao(
        "write", "-f", "-field=secret_id", "auth/approle/role/ebk/secret-id"
    ).strip()
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(secret_id)
    secret_file.chmod(0o600)
    pg_cluster.psql(
        "CREATE TABLE kms_phys (id int primary key, v text);"
        "INSERT INTO kms_phys SELECT g, md5(g::text) FROM generate_series(1, 5000) g"
    )
    expected = pg_cluster.psql(CONTENT.format(table="kms_phys"))
    keys = (
        f'[keys]\nprovider = "vault"\n\n[vault]\naddress = "{openbao.address}"\n'
        f'transit_key = "ebk"\nauth = "approle"\nrole_id = "{role_id}"\n'
        f'secret_id_file = "{secret_file}"\nca_cert = "{openbao.ca_cert}"\n'
    )
    env = kms_env(tmp_path / "ebk", pg_cluster, keys)
    try:
        manifest = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
        assert manifest["key_slots"] == ["vault/transit/ebk:v1"]
        key_doc = json.loads(
            (env.repo_dir / "backups" / manifest["backup_id"] / "key.json").read_text()
        )
        assert key_doc["slots"][0]["kek_id"] == "transit/ebk:v1"
        target = postgres_dir / "restored"
        env.run("restore", manifest["backup_id"], "--to", str(target), "--owner", "postgres")
        restored = start_existing(target)
        try:
            assert restored.psql(CONTENT.format(table="kms_phys")) == expected
        finally:
            restored.stop()
    finally:
        pg_cluster.psql("DROP TABLE kms_phys")


def test_kms_requests_per_backup_do_not_grow_with_the_database(
    openbao: Bao, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """Counted by OpenBao's audit device: the same requests for 1x and ~10x the data."""
    env = kms_env(tmp_path / "ebk", pg_cluster, vault_toml(openbao))
    try:
        counts, sizes = [], []
        for rows in (20_000, 200_000):
            make_db(pg_cluster, "kms_count", rows)
            before = len(openbao.transit_requests())
            manifest = json.loads(
                env.run("backup", "--type", "logical", "--database", "kms_count", "--json").stdout
            )
            counts.append(openbao.transit_requests()[before:])
            sizes.append(manifest["plain_size"])
        assert sizes[1] > 8 * sizes[0] and sizes[1] > 8 * 1024 * 1024  # many 1 MiB chunks
        # Per process: keys check (encrypt, decrypt, decrypt under a foreign context) and
        # the writer key's unwrap; per backup: one wrap.
        assert (
            counts[0]
            == counts[1]
            == [
                "transit/encrypt/ebk",
                "transit/decrypt/ebk",
                "transit/decrypt/ebk",
                "transit/decrypt/ebk",
                "transit/encrypt/ebk",
            ]
        )
        expected = pg_cluster.psql(CONTENT.format(table="t"), db="kms_count")
        before = len(openbao.transit_requests())
        env.run(
            "restore", "latest", "--to-db", "kms_count_copy", "--database", "kms_count", "--create"
        )
        # The writer key (to trust the listing), then the backup's data key.
        assert openbao.transit_requests()[before:] == ["transit/decrypt/ebk"] * 2
        assert pg_cluster.psql(CONTENT.format(table="t"), db="kms_count_copy") == expected
        # With the writer key pinned, a restore is one KMS call: the data key.
        writer = env.run("keys", "writer-key").stdout.strip()
        env.config_path.write_text(
            env.config_path.read_text().replace(
                "[repository]\n", f'[repository]\nwriter_keys = ["{writer}"]\n'
            )
        )
        drop_dbs(pg_cluster, "kms_count_copy")
        before = len(openbao.transit_requests())
        env.run(
            "restore", "latest", "--to-db", "kms_count_copy", "--database", "kms_count", "--create"
        )
        assert openbao.transit_requests()[before:] == ["transit/decrypt/ebk"]
    finally:
        drop_dbs(pg_cluster, "kms_count", "kms_count_copy")


def test_key_object_moved_between_backups_does_not_unwrap(
    openbao: Bao, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    env = kms_env(tmp_path / "ebk", pg_cluster, vault_toml(openbao))
    make_db(pg_cluster, "kms_move", 100)
    try:
        ids = [
            json.loads(
                env.run("backup", "--type", "logical", "--database", "kms_move", "--json").stdout
            )["backup_id"]
            for _ in range(2)
        ]
        key_a = env.repo_dir / "backups" / ids[0] / "key.json"
        key_b = env.repo_dir / "backups" / ids[1] / "key.json"
        own_b = key_b.read_bytes()
        restore_b = (
            "restore",
            ids[1],
            "--to-db",
            "kms_move_copy",
            "--database",
            "kms_move",
            "--create",
        )
        # a plain copy: refused by the key object's own backup id
        key_b.write_bytes(key_a.read_bytes())
        result = env.run(*restore_b, expect=3)
        assert f"belongs to backup {ids[0]}" in result.output
        # an edited copy claiming to be B's: its context still names A's data key
        doc = json.loads(key_a.read_text())
        doc["backup_id"] = doc["context"]["backup_id"] = ids[1]
        key_b.write_text(json.dumps(doc))
        before = len(openbao.transit_requests())
        result = env.run(*restore_b, expect=3)
        # Its context names A's data key, not the one B's signed manifest names: refused
        # before Vault is asked for it (only the writer key is unwrapped, to trust B).
        assert "copied from another backup or cluster" in result.output
        assert openbao.transit_requests()[before:] == ["transit/decrypt/ebk"]
        assert (
            pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'kms_move_copy'")
            == "0"
        )
        key_b.write_bytes(own_b)
        env.run(*restore_b)
    finally:
        drop_dbs(pg_cluster, "kms_move", "kms_move_copy")


def test_vault_unreachable_refuses_backup_and_writes_nothing(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    port = free_port()
    token = tmp_path / "token"
    token.write_text("s.nothing")
    token.chmod(0o600)
    keys = (
        f'[keys]\nprovider = "vault"\n\n[vault]\naddress = "https://127.0.0.1:{port}"\n'
        f'transit_key = "ebk"\ntoken_file = "{token}"\ntimeout = 2.0\nretries = 1\n'
    )
    env = kms_env(tmp_path / "ebk", pg_cluster, keys)
    before = stored_files(env)
    result = env.run("backup", "--type", "logical", expect=3)
    assert "unreachable" in result.output and f"127.0.0.1:{port}" in result.output
    assert "s.nothing" not in result.output
    assert stored_files(env) == before
    check = env.run("keys", "check", "--json", expect=3)
    assert json.loads(check.stdout)["ok"] is False


def test_sealed_openbao_is_a_clear_error(
    own_openbao: Bao, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    env = kms_env(tmp_path / "ebk", pg_cluster, vault_toml(own_openbao))
    env.run("keys", "check")
    own_openbao.bao("operator", "seal")
    before = stored_files(env)
    result = env.run("backup", "--type", "logical", expect=3)
    assert "Vault is sealed" in result.output and "unseal" in result.output
    assert stored_files(env) == before
    assert "Vault is sealed" in env.run("keys", "check", expect=3).output


def test_kms_stopped_restore_with_recovery_key_only(
    own_openbao: Bao, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    identity = tmp_path / "offline" / "recovery.txt"
    identity.parent.mkdir()
    keygen = kms_env(
        tmp_path / "keygen",
        None,
        f'[keys]\nprovider = "keyfile"\nkeyfile = "{tmp_path / "unused-kek.json"}"\n',
    )
    # Made before the repository exists (as an operator would): no writer key recorded yet.
    out = keygen.run(
        "keys",
        "recovery-keygen",
        "--out",
        str(identity),
        "--writer-key",
        "ebkwriter1placeholder",
        expect=None,
    ).output
    assert "not a writer public key" in out  # a typo'd key is refused, nothing written
    assert not identity.exists()
    out = keygen.run("keys", "recovery-keygen", "--out", str(identity)).output
    recipient = next(w.strip('"[]') for w in out.split() if w.startswith('["ebkrecovery1'))
    env = kms_env(tmp_path / "ebk", pg_cluster, vault_toml(own_openbao, recipients=(recipient,)))
    # ... then the repository's writer key is added to the identity, as documented.
    writer = env.run("keys", "writer-key").stdout.strip()
    identity.write_text(
        identity.read_text().replace("# recipient:", f"# writer-key: {writer}\n# recipient:")
    )
    expected = make_db(pg_cluster, "kms_rec", 2000)
    try:
        backup_id = json.loads(
            env.run("backup", "--type", "logical", "--database", "kms_rec", "--json").stdout
        )["backup_id"]
        slots = json.loads((env.repo_dir / "backups" / backup_id / "key.json").read_text())["slots"]
        assert [(s["provider"], s["kek_id"]) for s in slots] == [
            ("vault", "transit/ebk:v1"),
            ("recovery", recipient),
        ]
        own_openbao.stop()
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", own_openbao.port)) != 0
        args = (
            "restore",
            backup_id,
            "--to-db",
            "kms_rec_copy",
            "--database",
            "kms_rec",
            "--create",
        )
        assert "unreachable" in env.run(*args, expect=3).output
        env.run(*args, "--recovery-key", str(identity))
        assert pg_cluster.psql(CONTENT.format(table="t"), db="kms_rec_copy") == expected
    finally:
        drop_dbs(pg_cluster, "kms_rec", "kms_rec_copy")


def test_kubernetes_auth_without_service_account_token(tmp_path: Path) -> None:
    """Only the failure path: a real Kubernetes login needs a Kubernetes API (TokenReview)."""
    keys = (
        '[keys]\nprovider = "vault"\n\n[vault]\naddress = "https://127.0.0.1:1"\n'
        f'transit_key = "ebk"\nauth = "kubernetes"\nkubernetes_role = "ebk"\n'
        f'jwt_file = "{tmp_path / "no-token"}"\nretries = 0\n'
    )
    env = kms_env(tmp_path / "ebk", None, keys)
    assert "service account token" in env.run("keys", "check", expect=3).output


def test_vault_that_never_answers_times_out() -> None:
    """A peer that accepts TCP but never speaks: bounded by vault.timeout and retries."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        cfg = VaultConfig(
            address=f"https://127.0.0.1:{port}", transit_key="ebk", timeout=0.5, retries=1
        )
        vault = VaultTransitProvider(cfg, environ={"VAULT_TOKEN": "s.test"})
        with pytest.raises(KeyProviderUnavailable, match=r"timed out after 2 attempt\(s\)"):
            vault.wrap(secrets.token_bytes(32), CTX)


def test_cli_rewrap_after_transit_rotation(
    openbao: Bao, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    openbao.bao("write", "-f", "transit/keys/clirot", "derived=true")
    env = kms_env(tmp_path / "ebk", pg_cluster, vault_toml(openbao, key="clirot"))
    expected = make_db(pg_cluster, "kms_clirot", 300)
    try:
        backup_id = json.loads(
            env.run("backup", "--type", "logical", "--database", "kms_clirot", "--json").stdout
        )["backup_id"]
        key_file = env.repo_dir / "backups" / backup_id / "key.json"
        assert json.loads(key_file.read_text())["slots"][0]["kek_id"] == "transit/clirot:v1"
        openbao.bao("write", "-f", "transit/keys/clirot/rotate")
        before = len(openbao.transit_requests())
        env.run("keys", "rewrap")
        # The writer key is re-wrapped and opened (to trust the listing), then one
        # rewrap per backup.
        assert openbao.transit_requests()[before:] == [
            "transit/rewrap/clirot",
            "transit/decrypt/clirot",
            "transit/rewrap/clirot",
        ]
        assert json.loads(key_file.read_text())["slots"][0]["kek_id"] == "transit/clirot:v2"
        # old versions can now be retired: only v2 is needed to restore
        openbao.bao("write", "transit/keys/clirot/config", "min_decryption_version=2")
        env.run(
            "restore",
            backup_id,
            "--to-db",
            "kms_clirot_copy",
            "--database",
            "kms_clirot",
            "--create",
        )
        assert pg_cluster.psql(CONTENT.format(table="t"), db="kms_clirot_copy") == expected
    finally:
        drop_dbs(pg_cluster, "kms_clirot", "kms_clirot_copy")


def test_token_file_is_read_again_when_the_token_was_revoked(openbao: Bao) -> None:
    """Long-running daemon + Vault Agent: a renewed token file is picked up after a 403."""
    first = openbao.bao("token", "create", "-policy=ebk", "-field=token").strip()
    token_file = openbao.token_file(first)
    vault = VaultTransitProvider(
        VaultConfig(
            address=openbao.address,
            transit_key="ebk",
            token_file=str(token_file),
            ca_cert=str(openbao.ca_cert),
            retries=0,
        ),
        environ={},
    )
    slot = vault.wrap(secrets.token_bytes(32), CTX)
    openbao.bao("token", "revoke", first)
    second = openbao.bao("token", "create", "-policy=ebk", "-field=token").strip()
    token_file.write_text(second)
    assert len(vault.unwrap(slot, CTX)) == 32
    openbao.bao("token", "revoke", second)
    with pytest.raises(KeyAccessDenied, match="not expired"):
        vault.unwrap(slot, CTX)
