"""Build the configured key providers; commands never import a provider directly."""

from __future__ import annotations

from pathlib import Path

from ebk.config import AwsKmsConfig, KeysConfig, VaultConfig
from ebk.errors import ConfigError
from ebk.keys.base import KeyProvider


def build_primary(
    cfg: KeysConfig, *, vault: VaultConfig | None = None, awskms: AwsKmsConfig | None = None
) -> KeyProvider:
    """The provider that wraps, unwraps and rewraps; constructing it never touches the network."""
    if cfg.provider == "keyfile":
        from ebk.keys.keyfile import KeyFileProvider

        return KeyFileProvider(Path(cfg.keyfile))
    if cfg.provider == "vault":
        from ebk.keys.vault import VaultTransitProvider

        return VaultTransitProvider(vault or VaultConfig())
    if cfg.provider == "awskms":
        from ebk.keys.awskms import AwsKmsProvider

        return AwsKmsProvider(awskms or AwsKmsConfig())
    raise ConfigError(f"keys.provider = {cfg.provider!r} is not a known provider")


def build_providers(
    cfg: KeysConfig, *, vault: VaultConfig | None = None, awskms: AwsKmsConfig | None = None
) -> list[KeyProvider]:
    """The primary provider first, then one wrap-only slot per recovery recipient.

    Every provider wraps each new data key; restores try those that own a slot.
    """
    from ebk.keys.recovery import RecoveryRecipient

    providers: list[KeyProvider] = [build_primary(cfg, vault=vault, awskms=awskms)]
    providers += [RecoveryRecipient(r) for r in dict.fromkeys(cfg.recovery_recipients)]
    return providers
