"""Build the configured key providers; commands never import a provider directly."""

from __future__ import annotations

from pathlib import Path

from ebk.config import KeysConfig
from ebk.errors import ConfigError
from ebk.keys.base import KeyProvider


def build_providers(cfg: KeysConfig) -> list[KeyProvider]:
    """The primary provider first; every one of them wraps each new data key."""
    if cfg.provider == "keyfile":
        from ebk.keys.keyfile import KeyFileProvider

        return [KeyFileProvider(Path(cfg.keyfile))]
    raise ConfigError(f"keys.provider = {cfg.provider!r} is not a known provider")
