"""What a command needs, built from the config on demand (no global state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ebk.config import Config, load_config
from ebk.keys.base import KeyProvider
from ebk.keys.factory import build_providers
from ebk.logsetup import configure_logging
from ebk.repository import Repository
from ebk.storage.base import Storage
from ebk.storage.factory import open_storage


@dataclass
class Runtime:
    config: Config
    json_output: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None, *, json_output: bool = False) -> Runtime:
        config = load_config(path)
        configure_logging(config.log.level, config.log.format)
        return cls(config, json_output=json_output)

    @cached_property
    def storage(self) -> Storage:
        return open_storage(self.config.repository.url, self.config.storage)

    @cached_property
    def repository(self) -> Repository:
        return Repository(self.storage)

    @cached_property
    def key_providers(self) -> list[KeyProvider]:
        return build_providers(self.config.keys, vault=self.config.vault, awskms=self.config.awskms)
