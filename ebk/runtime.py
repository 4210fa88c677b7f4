"""What a command needs, built from the config on demand (no global state)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ebk.config import Config, load_config
from ebk.errors import RepositoryNotInitialized
from ebk.keys.base import KeyProvider
from ebk.keys.check import check_providers
from ebk.keys.factory import build_providers
from ebk.logsetup import configure_logging
from ebk.repository import Repository
from ebk.repository.cache import (
    HighWaterMark,
    ManifestCache,
    VerifiedDigests,
    default_cache_root,
)
from ebk.repository.writer import TrustedWriters, WriterKey, open_writer_key, trusted_from
from ebk.storage.factory import open_storage


@dataclass
class Runtime:
    config: Config
    json_output: bool = False
    key_check: list[dict[str, str]] | None = None  # the result of the one round-trip check
    trust_override: TrustedWriters | None = None  # e.g. from a recovery identity file

    @classmethod
    def load(cls, path: Path | None, *, json_output: bool = False) -> Runtime:
        config = load_config(path)
        configure_logging(config.log.level, config.log.format)
        return cls(config, json_output=json_output)

    @cached_property
    def repository(self) -> Repository:
        cfg = self.config.repository
        cache, verified, highwater = None, None, None
        if cfg.cache_dir != "off":
            root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root()
            verified = VerifiedDigests(root, cfg.url)
            highwater = HighWaterMark(root, cfg.url)
            if not cfg.url.startswith("file:"):  # a local repository is its own cache
                cache = ManifestCache(root, cfg.url)
        return Repository(
            open_storage(cfg.url, self.config.storage),
            cache=cache,
            trust=self.trusted_writers,
            verified=verified,
            highwater=highwater,
        )

    @cached_property
    def key_providers(self) -> list[KeyProvider]:
        return build_providers(self.config.keys, vault=self.config.vault, awskms=self.config.awskms)

    @cached_property
    def _writer_key(self) -> WriterKey:
        repo = self.repository
        marker = repo.require_initialized()
        if marker.repository_id is None:
            raise RepositoryNotInitialized(
                f"{repo.url} was created by ebk 0.1 and has no repository id",
                hint="run `ebk repo migrate` once",
            )
        return open_writer_key(
            repo.read_writer_key_object(), self.key_providers, repository_id=marker.repository_id
        )

    def writer_key(self) -> WriterKey:
        """The private writer key, unwrapped once per Runtime (one KMS call)."""
        return self._writer_key

    def trusted_writers(self) -> TrustedWriters:
        """Pinned writer keys (config, recovery identity) or, else, the KEK-wrapped one."""
        if self.trust_override is not None:
            return self.trust_override
        pinned = self.config.repository.writer_keys
        if pinned:
            return trusted_from({f"repository.writer_keys[{i}]": k for i, k in enumerate(pinned)})
        return TrustedWriters([self.writer_key().public])

    def checked_key_providers(self) -> list[KeyProvider]:
        """The providers, proven by a round trip once per Runtime (process or daemon reload).

        The check costs a wrap and two unwraps per provider; a backup then costs
        one wrap, so a daemon pays the check once, not per backup.
        """
        if self.key_check is None:
            self.key_check = check_providers(self.key_providers)
        return self.key_providers
