"""Offline recovery key: an age-style X25519 key slot the daemon can fill but never open.

The config holds only the public *recipient*; the private *identity* is made
once by ``ebk keys recovery-keygen`` and kept offline.  Every new backup gets
one slot per recipient, so ``ebk restore --recovery-key FILE`` works when the
KMS is unreachable or gone.

Encodings (Bech32, BIP-173: a checksum catches typos, no ``+/=`` to mangle,
the same choice as age):
    recipient  ebkrecovery1<52 chars><6 checksum>       (in keys.recovery_recipients)
    identity   EBK-RECOVERY-KEY-1<52 chars><6 checksum> (the 0600 identity file)

Slot (provider "recovery", kek_id = the recipient) = ephemeral_pub(32) |
ChaCha20-Poly1305(k, nonce=0^12, dek, aad = LABEL | canonical context), with
k = HKDF-SHA256(X25519(ephemeral, recipient), salt = ephemeral_pub |
recipient_pub, info = LABEL).  A fresh ephemeral key per slot makes every k
unique, so the fixed nonce is safe (as in age).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ebk.errors import ConfigError, KeyProviderError, WrongKey
from ebk.keys.base import WrappedKey, canonical_context

RECIPIENT_HRP = "ebkrecovery"
IDENTITY_HRP = "ebk-recovery-key-"
LABEL = b"ebk/recovery/v1"
PROVIDER = "recovery"
_NONCE = bytes(12)
_SLOT_SIZE = 32 + 32 + 16

# --- Bech32 (BIP-173), just enough for 32-byte keys --------------------------
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Sequence[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: Sequence[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad and bits:
        out.append((acc << (tobits - bits)) & maxv)
    elif not pad and (bits >= frombits or (acc << (tobits - bits)) & maxv):
        raise ValueError("invalid padding")
    return out


def bech32_encode(hrp: str, payload: bytes) -> str:
    data = _convert(payload, 8, 5, True)
    poly = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("no separator or checksum")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(c not in _CHARSET for c in rest):
        raise ValueError("invalid character")
    data = [_CHARSET.index(c) for c in rest]
    if _polymod([*_hrp_expand(hrp), *data]) != 1:
        raise ValueError("checksum mismatch (a typo?)")
    return hrp, bytes(_convert(data[:-6], 5, 8, False))


# --- keys ------------------------------------------------------------------


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def decode_key32(text: str, hrp: str, what: str) -> bytes:
    """The 32 bytes of a Bech32 key with human-readable part ``hrp``; ValueError otherwise."""
    found, raw = bech32_decode(text.strip())
    if found != hrp or len(raw) != 32:
        raise ValueError(f"not an {hrp}1... {what}")
    return raw


def parse_recipient(text: str, *, where: str) -> X25519PublicKey:
    """A recipient line from the config; ConfigError names the key when it is not one."""
    try:
        return X25519PublicKey.from_public_bytes(decode_key32(text, RECIPIENT_HRP, "recipient"))
    except ValueError as exc:
        raise ConfigError(
            f"{where}: {text[:24]!r}... is not a valid recovery recipient ({exc})",
            hint="paste the 'recipient:' line printed by `ebk keys recovery-keygen`",
        ) from None


def encode_recipient(key: X25519PublicKey) -> str:
    return bech32_encode(RECIPIENT_HRP, _raw_public(key))


def generate_identity() -> tuple[str, str]:
    """(identity line, recipient line) of a fresh X25519 key pair."""
    private = X25519PrivateKey.generate()
    identity = bech32_encode(IDENTITY_HRP, private.private_bytes_raw()).upper()
    return identity, encode_recipient(private.public_key())


WRITER_KEY_LINE = "# writer-key: "


def write_identity_file(path: Path, writer_keys: Sequence[str] = ()) -> str:
    """Write a new identity with mode 0600, never over an existing file; return its recipient.

    ``writer_keys`` (public) are recorded so that a break-glass restore with only
    this file still checks that a backup was written by the repository's ebk.
    """
    identity, recipient = generate_identity()
    text = (
        "# ebk offline recovery key: it opens every backup that lists its recipient.\n"
        "# Keep it OFFLINE (a safe, a password manager), never next to the repository.\n"
        f"# created: {datetime.now(UTC).isoformat(timespec='seconds')}\n"
        f"# recipient: {recipient}\n"
        + "".join(f"{WRITER_KEY_LINE}{key}\n" for key in writer_keys)
        + f"{identity}\n"
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyProviderError(
            f"{path} already exists; refusing to overwrite a recovery key",
            hint="losing a recovery key loses the way back to every backup it covers; "
            "pick another path",
        ) from None
    except OSError as exc:
        raise KeyProviderError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return recipient


def _slot_key(shared: bytes, ephemeral_pub: bytes, recipient_pub: bytes) -> bytes:
    if shared == bytes(32):
        raise ValueError("low-order point")
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral_pub + recipient_pub, info=LABEL
    )
    return hkdf.derive(shared)


def seal_for(recipient: X25519PublicKey, dek: bytes, context: Mapping[str, str]) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    ephemeral_pub = _raw_public(ephemeral.public_key())
    key = _slot_key(ephemeral.exchange(recipient), ephemeral_pub, _raw_public(recipient))
    return ephemeral_pub + ChaCha20Poly1305(key).encrypt(
        _NONCE, dek, LABEL + canonical_context(context)
    )


class RecoveryRecipient:
    """Wrap-only slot provider: the daemon holds the public half and cannot unwrap."""

    name = PROVIDER
    wrap_only = True

    def __init__(self, recipient: str) -> None:
        self._key = parse_recipient(recipient, where="keys.recovery_recipients")
        self.recipient = encode_recipient(self._key)

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        return WrappedKey(self.name, self.recipient, seal_for(self._key, dek, context))

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        raise KeyProviderError(
            f"recovery recipient {self.recipient} can only wrap: ebk never holds its private key",
            hint="restore with `ebk restore ... --recovery-key FILE` and the offline identity file",
        )

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        """A recipient has no versions: its slot stays valid as it is."""
        return wrapped

    def owns(self, wrapped: WrappedKey) -> bool:
        return False

    def describe(self) -> dict[str, str]:
        return {"provider": self.name, "recipient": self.recipient, "mode": "wrap-only"}


class RecoveryIdentity:
    """The private half, loaded only by `ebk restore --recovery-key`: unwraps its own slots."""

    name = PROVIDER

    def __init__(self, path: Path) -> None:
        self.path = path
        self._private = self._load()
        self.recipient = encode_recipient(self._private.public_key())

    def _load(self) -> X25519PrivateKey:
        try:
            st = self.path.stat()
            text = self.path.read_text()
        except FileNotFoundError:
            raise KeyProviderError(f"recovery key file {self.path} does not exist") from None
        except (PermissionError, UnicodeDecodeError):
            raise KeyProviderError(f"recovery key file {self.path} is not readable") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyProviderError(
                f"recovery key file {self.path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it",
                hint=f"run `chmod 600 {self.path}`",
            )
        self.writer_keys = [
            ln[len(WRITER_KEY_LINE) :].strip()
            for ln in text.splitlines()
            if ln.startswith(WRITER_KEY_LINE)
        ]
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        try:
            if len(lines) != 1:
                raise ValueError(f"expected one key line, found {len(lines)}")
            hrp, raw = bech32_decode(lines[0])
            if hrp != IDENTITY_HRP or len(raw) != 32:
                raise ValueError("not an EBK-RECOVERY-KEY-1... identity")
            return X25519PrivateKey.from_private_bytes(raw)
        except ValueError as exc:
            raise KeyProviderError(
                f"{self.path} is not an ebk recovery key ({exc})",
                hint="it is the file written by `ebk keys recovery-keygen`",
            ) from None

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        return WrappedKey(
            self.name, self.recipient, seal_for(self._private.public_key(), dek, context)
        )

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        if wrapped.kek_id != self.recipient:
            raise WrongKey(
                f"this key slot is for recovery recipient {wrapped.kek_id}, and {self.path} "
                f"is the identity of {self.recipient}",
                hint="use the recovery key whose 'recipient:' line matches the backup's slot",
            )
        blob = wrapped.ciphertext
        if len(blob) != _SLOT_SIZE:
            raise WrongKey(f"recovery slot for {wrapped.kek_id} has a wrong size ({len(blob)})")
        ephemeral_pub = blob[:32]
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(ephemeral_pub))
            key = _slot_key(shared, ephemeral_pub, _raw_public(self._private.public_key()))
            return ChaCha20Poly1305(key).decrypt(
                _NONCE, blob[32:], LABEL + canonical_context(context)
            )
        except (InvalidTag, ValueError):
            raise WrongKey(
                f"the data key does not unwrap with recovery key {self.path}: the key object "
                "was modified or belongs to another backup",
                hint="the key object must come from the same backup as its data",
            ) from None

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        return wrapped

    def owns(self, wrapped: WrappedKey) -> bool:
        return wrapped.provider == self.name

    def describe(self) -> dict[str, str]:
        return {"provider": self.name, "recipient": self.recipient, "path": str(self.path)}
