"""Configuration: one TOML file, EBK_<SECTION>__<KEY> environment overrides.

Each section is a dataclass; its fields, defaults and docstrings are the
schema, and config.example.toml documents every key.  Unknown keys and wrong
types are errors that name the key, because a typo in a backup tool's config
must not silently fall back to a default.  No secret belongs in the file:
passwords and tokens come from files or the environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebk.errors import ConfigError

ENV_PREFIX = "EBK_"
DEFAULT_CONFIG_PATH = Path("/etc/ebk/ebk.toml")


@dataclass
class RepositoryConfig:
    """Where backups are stored."""

    url: str = "file:///var/lib/ebk/repository"


@dataclass
class StorageConfig:
    """Backend options for object stores (credentials come from each SDK's chain)."""

    # Owned by the object-storage work (issue 3): endpoint, region, addressing
    # style, parts in flight, retries, server-side encryption, object lock.
    endpoint_url: str = ""
    region: str = ""


@dataclass
class KeysConfig:
    """Which KEK wraps the per-backup data keys."""

    provider: str = "keyfile"
    keyfile: str = "/etc/ebk/kek.json"

    def validate(self) -> None:
        if self.provider not in ("keyfile",):
            raise ConfigError(
                f"keys.provider = {self.provider!r} is not a known provider",
                hint="use one of: keyfile",
            )


@dataclass
class VaultConfig:
    """Vault / OpenBao Transit (keys.provider = "vault"); the token never goes here."""

    # Owned by the KMS work (issue 4).
    address: str = ""
    transit_key: str = ""


@dataclass
class AwsKmsConfig:
    """AWS KMS (keys.provider = "awskms")."""

    # Owned by the KMS work (issue 4).
    key_id: str = ""
    region: str = ""
    endpoint_url: str = ""


@dataclass
class PreflightConfig:
    """Volume-encryption preflight: require | warn | off."""

    # Owned by the preflight work (issue 5).
    policy: str = "warn"

    def validate(self) -> None:
        if self.policy not in ("require", "warn", "off"):
            raise ConfigError(
                f"preflight.policy = {self.policy!r}", hint="use require, warn or off"
            )


@dataclass
class DaemonConfig:
    """The long-running scheduler (`ebk daemon`)."""

    # Owned by the daemon work (issue 6).
    listen: str = "127.0.0.1:9187"


@dataclass
class RetentionConfig:
    """Which complete backups `ebk retention` and the daemon keep."""

    # Owned by the daemon work (issue 6).
    keep_last: int = 7


@dataclass
class PostgresConfig:
    """How ebk reaches the cluster it backs up (libpq semantics)."""

    host: str = "/var/run/postgresql"
    port: int = 5432
    user: str = "postgres"
    dbname: str = "postgres"
    password_file: str = ""
    bin_dir: str = ""
    data_directory: str = ""

    def validate(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"postgres.port = {self.port} is not a TCP port", hint="use 1..65535")


@dataclass
class BackupConfig:
    """How backups are made."""

    compression_level: int = 3
    compression_threads: int = 0
    databases: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not 0 <= self.compression_level <= 19:
            raise ConfigError(
                f"backup.compression_level = {self.compression_level} is out of range",
                hint="use 0 (off) to 19; 1-3 is fast and usually right for backups",
            )
        if not 0 <= self.compression_threads <= 64:
            raise ConfigError("backup.compression_threads must be 0..64")


@dataclass
class LogConfig:
    """Logging: JSON when stderr is not a terminal, unless format says otherwise."""

    level: str = "info"
    format: str = "auto"

    def validate(self) -> None:
        if self.level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log.level = {self.level!r}", hint="use debug, info, warning or error")
        if self.format not in ("auto", "json", "console"):
            raise ConfigError(f"log.format = {self.format!r}", hint="use auto, json or console")


@dataclass
class Config:
    repository: RepositoryConfig = field(default_factory=RepositoryConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    vault: VaultConfig = field(default_factory=VaultConfig)
    awskms: AwsKmsConfig = field(default_factory=AwsKmsConfig)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "defaults"


def _expected(tp: Any) -> tuple[type, ...]:
    origin = typing.get_origin(tp)
    if origin in (list,):
        return (list,)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for t in typing.get_args(tp) if t is not type(None))
    return (tp,)


def _coerce_env(raw: str, tp: Any, where: str) -> Any:
    kinds = _expected(tp)
    try:
        if bool in kinds:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if int in kinds:
            return int(raw)
        if float in kinds:
            return float(raw)
        if list in kinds:
            return [item.strip() for item in raw.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"{where} = {raw!r} is not a valid {kinds[0].__name__}") from None
    return raw


def _build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(
                f"unknown key {section}.{key}",
                hint=f"valid keys in [{section}]: {', '.join(sorted(known))}",
            )
    for key, value in values.items():
        kinds = _expected(hints[key])
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(
                f"{section}.{key} must be a {kinds[0].__name__}, got {type(value).__name__}",
                hint="see config.example.toml for every key with its type",
            )
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        validate()
    return instance


def _env_overrides(environ: typing.Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        overrides.setdefault(section, {})[key] = value
    return overrides


def load_config(path: Path | None, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Load and validate; every error names the key and says how to fix it."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist",
                hint="copy config.example.toml there, or pass --config PATH",
            ) from None
        except PermissionError:
            raise ConfigError(f"config file {path} is not readable by this user") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        source = str(path)
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}
    hints = typing.get_type_hints(Config)
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(
                f"unknown section [{name}] in {source}",
                hint=f"valid sections: {', '.join(sorted(sections))}",
            )
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table of keys, not a single value")
    for section, values in _env_overrides(environ).items():
        if section not in sections:
            raise ConfigError(
                f"environment variable {ENV_PREFIX}{section.upper()}__… names unknown section {section!r}",
                hint=f"valid sections: {', '.join(sorted(sections))}",
            )
        cls = hints[section]
        field_hints = typing.get_type_hints(cls)
        merged = data.setdefault(section, {})
        for key, raw in values.items():
            where = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            if key not in field_hints:
                raise ConfigError(f"environment variable {where} names unknown key {section}.{key}")
            merged[key] = _coerce_env(raw, field_hints[key], where)
    built = {name: _build_section(hints[name], data.get(name, {}), name) for name in sections}
    return Config(**built, source=source)
