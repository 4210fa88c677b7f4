"""KEK lifecycle: versions, rotation and retirement, as each provider can do them.

A second small interface beside KeyProvider (ebk/keys/base.py), implemented
by the key file, Vault/OpenBao Transit and AWS KMS providers:

- ``kek_info()``: the KEK versions the provider knows, oldest first, which one
  wraps new keys, when each was created and whether it still unwraps.  Needs
  read access to key metadata (Transit ``read`` on transit/keys/NAME; KMS
  DescribeKey, ListKeyRotations); without it KeyAccessDenied says so.
- ``version_of(slot)``: the version a key slot is wrapped under, as named in
  ``kek_info()`` (Transit "transit/NAME:vN", the KMS key ARN, the key file's
  KEK id).
- ``rotate_kek()``: a new version for new wraps; old versions keep unwrapping.
- ``retire_versions(ids, apply=...)``: make old versions unusable, or say
  what would be done; providers refuse what they cannot do safely.
- ``rewrap_needs_force``: True when a rotation keeps the version name a slot
  records (KMS automatic/on-demand rotation keeps the key ARN), so a rewrap
  after it must re-wrap every slot, not only those naming an old version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from ebk.keys.base import WrappedKey


@dataclass(frozen=True)
class KekVersion:
    """One KEK version; ``created`` is None when the provider does not say."""

    id: str
    created: datetime | None
    usable: bool = True  # False: retired (Transit below min_decryption_version, KMS disabled)
    current: bool = False  # wraps new data keys


@dataclass
class KekInfo:
    provider: str
    key: str  # the key file path, Transit key path or KMS key id, for people
    versions: list[KekVersion]
    # When the current key material was made, where it differs from the current
    # version's creation (KMS: the last rotation inside one key ARN).
    material_created: datetime | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def current(self) -> KekVersion | None:
        return next((v for v in self.versions if v.current), None)

    def by_id(self) -> dict[str, KekVersion]:
        return {v.id: v for v in self.versions}


@runtime_checkable
class KeyLifecycle(Protocol):
    rewrap_needs_force: bool

    def kek_info(self) -> KekInfo: ...

    def version_of(self, slot: WrappedKey) -> str: ...

    def rotate_kek(self) -> str: ...

    def retire_versions(self, kek_ids: list[str], *, apply: bool) -> list[str]: ...
