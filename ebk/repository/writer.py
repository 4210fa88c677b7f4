"""The writer key: what makes a manifest the repository's, not merely well-formed.

A bucket writer can wrap a data key for the public recovery recipient, encrypt
anything under it and MAC a manifest with it: the MAC proves only that whoever
wrote the manifest knew the DEK.  So every manifest is also signed with an
Ed25519 *writer key* that only ebk holds.  Its private half lives in the
repository wrapped by the KEK (``keys/writer.json``, like a data key, bound to
the repository id), so a process that can use the KEK can sign; its public
half is what readers trust:

- pinned in the config (``repository.writer_keys``) or in the offline recovery
  identity file (``# writer-key: ebkwriter1…``), so listing and break-glass
  restores need no KMS;
- otherwise derived by unwrapping ``keys/writer.json`` once per process: only a
  KEK holder could have wrapped it under this context, so it is authentic.

Signature: ``auth.sig = "ed25519:" + key_id + ":" + base64(Ed25519(b"ebk-manifest-v2\\0" ||
JCS(manifest without auth)))``; ``key_id`` = "wk-" + the first 16 hex digits of
SHA-256 of the raw public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ebk.errors import ConfigError, IntegrityError, KeyProviderError, WrongKey
from ebk.keys.base import KeyProvider, WrappedKey
from ebk.keys.recovery import bech32_encode, decode_key32

WRITER_KEY_OBJECT = "keys/writer.json"
MAX_WRITER_KEY_SIZE = 64 * 1024
PUBLIC_HRP = "ebkwriter"
SIGNATURE_DOMAIN = b"ebk-manifest-v2\x00"
PURPOSE = "ebk-writer-key"


def key_id_of(public: Ed25519PublicKey) -> str:
    return "wk-" + hashlib.sha256(public.public_bytes_raw()).hexdigest()[:16]


def encode_public(public: Ed25519PublicKey) -> str:
    return bech32_encode(PUBLIC_HRP, public.public_bytes_raw())


def parse_public(text: str, *, where: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(decode_key32(text, PUBLIC_HRP, "writer key"))
    except ValueError as exc:
        raise ConfigError(
            f"{where}: {text[:24]!r}... is not a writer public key ({exc})",
            hint="paste the key printed by `ebk keys writer-key`",
        ) from None


@dataclass(frozen=True)
class WriterKey:
    """The private writer key of a repository, unwrapped for this process."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public)

    def sign(self, covered: bytes) -> str:
        sig = self.private.sign(SIGNATURE_DOMAIN + covered)
        return f"ed25519:{self.key_id}:{base64.b64encode(sig).decode()}"


class TrustedWriters:
    """The writer public keys a reader trusts; verifies a manifest's ``auth.sig``."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {key_id_of(k): k for k in keys}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def describe(self) -> list[str]:
        return sorted(self._keys)

    def trusts(self, key_id: str) -> bool:
        return key_id in self._keys

    def encoded(self) -> list[str]:
        """The public keys as ebkwriter1… strings, for pinning."""
        return [encode_public(self._keys[k]) for k in sorted(self._keys)]

    def verify(self, covered: bytes, sig: str, *, what: str) -> None:
        scheme, _, rest = sig.partition(":")
        key_id, _, encoded = rest.partition(":")
        key = self._keys.get(key_id)
        if scheme != "ed25519" or key is None:
            raise IntegrityError(
                f"{what} is not signed by this repository's writer key "
                f"(signed by {key_id or 'nobody'}; trusted: {', '.join(self._keys) or 'none'})",
                hint="it was not written by the ebk that owns this repository; it is never "
                "listed, counted, kept, deleted or restored",
            )
        try:
            key.verify(base64.b64decode(encoded, validate=True), SIGNATURE_DOMAIN + covered)
        except (InvalidSignature, ValueError):
            raise IntegrityError(
                f"{what}: the writer signature does not verify (modified or forged)",
                hint="it is never listed, counted, kept, deleted or restored",
            ) from None


def _context(repository_id: str, key_id: str) -> dict[str, str]:
    return {"purpose": PURPOSE, "repository_id": repository_id, "key_id": key_id}


def new_writer_key(primary: KeyProvider, repository_id: str) -> tuple[WriterKey, bytes]:
    """A fresh writer key and its stored form (wrapped by the primary KEK only).

    Recovery recipients get no slot: a stolen recovery identity may read
    backups, but must not be able to write ones that verify.
    """
    private = Ed25519PrivateKey.from_private_bytes(secrets.token_bytes(32))
    writer = WriterKey(private)
    context = _context(repository_id, writer.key_id)
    slot = primary.wrap(private.private_bytes_raw(), context)
    doc = {
        "format": "ebk-writer-key",
        "version": 1,
        "repository_id": repository_id,
        "key_id": writer.key_id,
        "public_key": encode_public(writer.public),
        "slots": [
            {
                "provider": slot.provider,
                "kek_id": slot.kek_id,
                "wrapped": base64.b64encode(slot.ciphertext).decode(),
            }
        ],
    }
    return writer, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def open_writer_key(
    raw: bytes, providers: Sequence[KeyProvider], *, repository_id: str
) -> WriterKey:
    """Unwrap the stored writer key; the context binds it to this repository and key id."""
    try:
        doc = json.loads(raw)
        key_id = str(doc["key_id"])
        slots = [
            WrappedKey(s["provider"], s["kek_id"], base64.b64decode(s["wrapped"], validate=True))
            for s in doc["slots"]
        ]
        if doc.get("format") != "ebk-writer-key" or doc.get("version") != 1:
            raise ValueError("unknown format")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise IntegrityError(f"{WRITER_KEY_OBJECT} is malformed ({exc})") from None
    context = _context(repository_id, key_id)
    errors: list[KeyProviderError] = []
    for slot in slots:
        for provider in providers:
            if not provider.owns(slot):
                continue
            try:
                seed = provider.unwrap(slot, context)
            except KeyProviderError as exc:
                errors.append(exc)
                continue
            writer = WriterKey(Ed25519PrivateKey.from_private_bytes(seed))
            if writer.key_id != key_id:
                raise WrongKey(f"{WRITER_KEY_OBJECT} unwraps to another key than it names")
            return writer
    if errors:
        raise errors[0]
    raise WrongKey(
        f"no configured key provider can unwrap the repository's writer key ({WRITER_KEY_OBJECT})",
        hint="configure the KEK this repository was initialised with",
    )


def trusted_from(pinned: Mapping[str, str]) -> TrustedWriters:
    """Writer keys pinned in configuration: {where: ebkwriter1…}."""
    return TrustedWriters(parse_public(text, where=where) for where, text in pinned.items())


def writer_key_slots(raw: bytes) -> list[WrappedKey]:
    """The stored writer key's slots (which KEK versions it depends on)."""
    try:
        doc = json.loads(raw)
        return [
            WrappedKey(s["provider"], s["kek_id"], base64.b64decode(s["wrapped"], validate=True))
            for s in doc["slots"]
        ]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise IntegrityError(f"{WRITER_KEY_OBJECT} is malformed ({exc})") from None


def rewrap_writer_key(raw: bytes, provider: KeyProvider, *, repository_id: str) -> bytes | None:
    """The stored writer key with its slots re-wrapped under the provider's current KEK.

    Uses the provider's own rewrap (Transit rewrap, KMS ReEncrypt) where it can;
    None when nothing changed.
    """
    try:
        doc = json.loads(raw)
        context = _context(repository_id, str(doc["key_id"]))
        slots = doc["slots"]
        changed = False
        for slot in slots:
            if slot["provider"] != provider.name:
                continue
            old = WrappedKey(
                slot["provider"], slot["kek_id"], base64.b64decode(slot["wrapped"], validate=True)
            )
            new = provider.rewrap(old, context)
            if (new.kek_id, new.ciphertext) != (old.kek_id, old.ciphertext):
                slot["kek_id"] = new.kek_id
                slot["wrapped"] = base64.b64encode(new.ciphertext).decode()
                changed = True
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise IntegrityError(f"{WRITER_KEY_OBJECT} is malformed ({exc})") from None
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n" if changed else None
