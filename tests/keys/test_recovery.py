"""The offline recovery key: X25519 slot crypto, its encodings, files and CLI (no servers)."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from ebk.config import KeysConfig, load_config
from ebk.errors import ConfigError, KeyAccessDenied, KeyProviderError, WrongKey
from ebk.keys.awskms import map_client_error
from ebk.keys.base import WrappedKey
from ebk.keys.check import check_providers
from ebk.keys.envelope import KeyObject, new_data_key, open_data_key
from ebk.keys.factory import build_providers
from ebk.keys.keyfile import KeyFileProvider, create_key_file
from ebk.keys.recovery import (
    RecoveryIdentity,
    RecoveryRecipient,
    bech32_decode,
    bech32_encode,
    generate_identity,
    parse_recipient,
    write_identity_file,
)
from tests.support.ebkenv import make_env

CTX = {"backup_id": "20261128T000000Z-aaaaaa", "cluster": "7300000000000000001", "dek_id": "dek-1"}


def _identity(tmp_path: Path, name: str = "id.txt") -> tuple[RecoveryIdentity, RecoveryRecipient]:
    recipient = write_identity_file(tmp_path / name)
    return RecoveryIdentity(tmp_path / name), RecoveryRecipient(recipient)


def test_bech32_round_trip_and_typo_detection() -> None:
    payload = secrets.token_bytes(32)
    text = bech32_encode("ebkrecovery", payload)
    assert text.startswith("ebkrecovery1") and len(text) == 70
    assert bech32_decode(text) == ("ebkrecovery", payload)
    assert bech32_decode(text.upper()) == ("ebkrecovery", payload)
    typo = text[:20] + ("q" if text[20] != "q" else "p") + text[21:]
    with pytest.raises(ValueError, match="checksum"):
        bech32_decode(typo)
    with pytest.raises(ConfigError, match="not a valid recovery recipient"):
        parse_recipient(typo, where="keys.recovery_recipients")


def test_identity_and_recipient_formats() -> None:
    identity, recipient = generate_identity()
    assert identity.startswith("EBK-RECOVERY-KEY-1") and identity == identity.upper()
    assert recipient.startswith("ebkrecovery1")
    # an identity is not a recipient: pasting the secret into the config is refused
    with pytest.raises(ConfigError):
        parse_recipient(identity, where="keys.recovery_recipients")


def test_wrap_with_recipient_unwrap_with_identity(tmp_path: Path) -> None:
    identity, recipient = _identity(tmp_path)
    dek = secrets.token_bytes(32)
    slot = recipient.wrap(dek, CTX)
    assert slot.provider == "recovery" and slot.kek_id == recipient.recipient
    assert len(slot.ciphertext) == 80
    assert identity.owns(slot)
    assert identity.unwrap(slot, CTX) == dek
    # two wraps of one key differ (fresh ephemeral key each time)
    assert recipient.wrap(dek, CTX).ciphertext != slot.ciphertext


def test_wrong_identity_is_refused(tmp_path: Path) -> None:
    _, recipient = _identity(tmp_path, "a.txt")
    other, _ = _identity(tmp_path, "b.txt")
    slot = recipient.wrap(secrets.token_bytes(32), CTX)
    with pytest.raises(WrongKey, match="recipient"):
        other.unwrap(slot, CTX)
    # even when the slot claims the other identity's recipient, the crypto refuses it
    forged = WrappedKey(slot.provider, other.recipient, slot.ciphertext)
    with pytest.raises(WrongKey, match="does not unwrap"):
        other.unwrap(forged, CTX)


def test_wrong_context_or_tampered_slot_is_refused(tmp_path: Path) -> None:
    identity, recipient = _identity(tmp_path)
    slot = recipient.wrap(secrets.token_bytes(32), CTX)
    with pytest.raises(WrongKey):
        identity.unwrap(slot, {**CTX, "backup_id": "20261128T000001Z-bbbbbb"})
    for i in (0, 40, 79):
        bad = bytearray(slot.ciphertext)
        bad[i] ^= 1
        with pytest.raises(WrongKey):
            identity.unwrap(WrappedKey(slot.provider, slot.kek_id, bytes(bad)), CTX)
    with pytest.raises(WrongKey, match="wrong size"):
        identity.unwrap(WrappedKey(slot.provider, slot.kek_id, slot.ciphertext[:-1]), CTX)


def test_recipient_is_wrap_only(tmp_path: Path) -> None:
    _, recipient = _identity(tmp_path)
    slot = recipient.wrap(secrets.token_bytes(32), CTX)
    assert not recipient.owns(slot)
    with pytest.raises(KeyProviderError, match="can only wrap"):
        recipient.unwrap(slot, CTX)
    assert recipient.rewrap(slot, CTX) == slot


def test_identity_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "recovery.txt"
    recipient = write_identity_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert f"# recipient: {recipient}" in text
    with pytest.raises(KeyProviderError, match="refusing to overwrite"):
        write_identity_file(path)
    assert path.read_text() == text
    path.chmod(0o640)
    with pytest.raises(KeyProviderError, match="group or others"):
        RecoveryIdentity(path)
    path.chmod(0o600)
    path.write_text("# nothing\n")
    with pytest.raises(KeyProviderError, match="not an ebk recovery key"):
        RecoveryIdentity(path)


def test_envelope_opens_with_identity_alone(tmp_path: Path) -> None:
    """The data key a keyfile + recipient wrapped opens with only the identity."""
    create_key_file(tmp_path / "kek.json")
    identity, recipient = _identity(tmp_path)
    providers = [KeyFileProvider(tmp_path / "kek.json"), recipient]
    dek, key_object = new_data_key(providers, backup_id="b1", cluster="c1")
    assert [s.provider for s in key_object.slots] == ["keyfile", "recovery"]
    restored = KeyObject.from_json(key_object.to_json(), where="key.json")
    assert open_data_key(restored, [identity], backup_id="b1") == dek
    # the recipient alone (what the daemon holds) cannot open it
    with pytest.raises(WrongKey, match="no configured key provider"):
        open_data_key(restored, [recipient], backup_id="b1")


def test_config_recipients_and_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    _, recipient = _identity(tmp_path)
    create_key_file(tmp_path / "kek.json")
    cfg_file = tmp_path / "ebk.toml"
    cfg_file.write_text(
        f'[keys]\nkeyfile = "{tmp_path / "kek.json"}"\n'
        f'recovery_recipients = ["{recipient.recipient}"]\n'
    )
    cfg = load_config(cfg_file, environ={})
    providers = build_providers(cfg.keys, vault=cfg.vault, awskms=cfg.awskms)
    assert [p.name for p in providers] == ["keyfile", "recovery"]
    results = check_providers(providers)
    assert results[0]["check"] == "round trip ok, context bound"
    assert results[1]["check"].startswith("wrap ok")
    with pytest.raises(ConfigError, match="recovery_recipients"):
        load_config(cfg_file, environ={"EBK_KEYS__RECOVERY_RECIPIENTS": "ebkrecovery1nope"})
    with pytest.raises(ConfigError, match="not a known provider"):
        KeysConfig(provider="hsm").validate()
    with pytest.raises(ConfigError, match=r"vault\.address"):
        build_providers(KeysConfig(provider="vault"))
    with pytest.raises(ConfigError, match=r"awskms\.key_id"):
        build_providers(KeysConfig(provider="awskms"))


def test_check_refuses_a_provider_that_ignores_the_context(tmp_path: Path) -> None:
    """A KEK that unwraps under another backup's context must not be used."""

    class Unbound:
        name = "unbound"

        def wrap(self, dek: bytes, context: object) -> WrappedKey:
            return WrappedKey(self.name, "k", dek)

        def unwrap(self, wrapped: WrappedKey, context: object) -> bytes:
            return wrapped.ciphertext

        def describe(self) -> dict[str, str]:
            return {"provider": self.name}

    with pytest.raises(KeyProviderError, match="not bound to their backup"):
        check_providers([Unbound()])  # type: ignore[list-item]


def test_recovery_keygen_cli(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None)
    out = tmp_path / "recovery.txt"
    result = env.run("keys", "recovery-keygen", "--out", str(out))
    recipient = next(w.strip('"[]') for w in result.output.split() if w.startswith('["ebkrec'))
    assert RecoveryIdentity(out).recipient == recipient
    again = env.run("keys", "recovery-keygen", "--out", str(out), expect=3)
    assert "refusing to overwrite" in again.output


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "Decrypt")


@pytest.mark.parametrize(
    ("code", "cls", "words"),
    [
        ("DisabledException", KeyAccessDenied, "disabled"),
        ("KMSInvalidStateException", KeyAccessDenied, "pending deletion"),
        ("AccessDeniedException", KeyAccessDenied, "denied"),
        ("NotFoundException", KeyAccessDenied, "does not exist"),
        ("InvalidCiphertextException", WrongKey, "another backup"),
        ("IncorrectKeyException", WrongKey, "another key"),
    ],
)
def test_awskms_error_mapping(code: str, cls: type[Exception], words: str) -> None:
    """Codes moto does not produce (it ignores disabled keys) mapped without a server."""
    err = map_client_error(_client_error(code), "unwrap a data key", "KMS key alias/ebk")
    assert type(err) is cls
    assert words in str(err)
