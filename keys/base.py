"""The KeyProvider seam: wrap and unwrap per-backup data keys with a KEK.

Contract (every provider):
- The KEK never leaves the provider; ebk hands it a 32-byte data key (DEK)
  and a context, and keeps only the wrapped result.
- ``context`` binds the DEK to its backup and cluster (AES-GCM associated
  data, Transit context, KMS EncryptionContext): unwrap with another context
  fails with WrongKey.
- One call per backup or restore, never per chunk.
- Errors: KeyProviderUnavailable (unreachable, sealed), KeyAccessDenied
  (permission, disabled or unknown key), WrongKey (does not unwrap).
- ``rewrap`` re-encrypts a wrapped key under the provider's current KEK
  version without exposing it where the provider can avoid it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class WrappedKey:
    """One key slot: a DEK wrapped by one KEK."""

    provider: str
    kek_id: str
    ciphertext: bytes


class KeyProvider(Protocol):
    name: str

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes: ...

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey: ...

    def owns(self, wrapped: WrappedKey) -> bool:
        """True when this provider can attempt to unwrap the slot."""

    def describe(self) -> dict[str, str]:
        """Where the KEK lives, for `ebk show` and logs; never key material."""


def canonical_context(context: Mapping[str, str]) -> bytes:
    """The one byte encoding of a context used as associated data."""
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode()
