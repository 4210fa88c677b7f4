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
import re
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
    # Local copies of manifests read from an object store, so `ebk list` and retention
    # fetch only new ones; "" = ~/.cache/ebk, "off" = none.  Holds no key material.
    cache_dir: str = ""
    # The writer public keys (ebkwriter1…) readers trust, printed by `ebk keys writer-key`.
    # Pinned, `ebk list` and retention need no KMS; empty = derive from the KEK.
    writer_keys: list[str] = field(default_factory=list)


MIB = 1024 * 1024


@dataclass
class StorageConfig:
    """Backend options for object stores.

    Credentials never go here: each SDK's standard chain supplies them (AWS env,
    profiles and instance roles; Google ADC and workload identity; Azure
    AZURE_STORAGE_CONNECTION_STRING or azure-identity's DefaultAzureCredential).
    Upload memory is about part_size * (parts_in_flight + 1) per object.
    """

    endpoint_url: str = ""  # S3-compatible endpoint (MinIO, Ceph) or GCS API endpoint
    region: str = ""  # S3 region; empty = the SDK's chain (AWS_REGION, profile)
    addressing_style: str = "auto"  # S3: auto | path | virtual
    part_size: int = 8 * MIB  # bytes per multipart part / resumable chunk / block
    parts_in_flight: int = 4  # parts uploaded concurrently per object
    max_retries: int = 5  # retries of throttling, timeouts, 5xx (never of permanent errors)
    retry_base_delay: float = 0.5  # seconds; exponential backoff with full jitter
    retry_max_delay: float = 20.0  # seconds; cap of one backoff
    timeout: float = 60.0  # seconds to connect / per read
    sse_kms_key_id: str = ""  # S3 SSE-KMS key id or ARN (defence in depth)
    gcs_kms_key_name: str = ""  # GCS CMEK: projects/P/locations/L/keyRings/R/cryptoKeys/K
    azure_account_url: str = ""  # https://ACCOUNT.blob.core.windows.net (or Azurite's URL)
    azure_encryption_scope: str = ""  # Azure encryption scope name
    object_lock_days: int = 0  # S3 Object Lock retention per object; 0 = off
    object_lock_mode: str = "governance"  # governance | compliance

    def validate(self) -> None:
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise ConfigError(
                f"storage.addressing_style = {self.addressing_style!r}",
                hint="use auto, path (MinIO, most S3-compatible stores) or virtual",
            )
        if not 5 * MIB <= self.part_size <= 4096 * MIB or self.part_size % (256 * 1024):
            raise ConfigError(
                f"storage.part_size = {self.part_size} bytes is not usable",
                hint="use a multiple of 256 KiB between 5 MiB (5242880) and 4 GiB; "
                "8 MiB (8388608) is the default",
            )
        if not 1 <= self.parts_in_flight <= 64:
            raise ConfigError(
                f"storage.parts_in_flight = {self.parts_in_flight}", hint="use 1..64 (4 is typical)"
            )
        if not 0 <= self.max_retries <= 30:
            raise ConfigError(f"storage.max_retries = {self.max_retries}", hint="use 0..30")
        if self.retry_base_delay < 0 or self.retry_max_delay < self.retry_base_delay:
            raise ConfigError(
                "storage.retry_base_delay must be >= 0 and <= storage.retry_max_delay"
            )
        if self.timeout <= 0:
            raise ConfigError(f"storage.timeout = {self.timeout}", hint="use seconds > 0, e.g. 60")
        if not 0 <= self.object_lock_days <= 36500:
            raise ConfigError(
                f"storage.object_lock_days = {self.object_lock_days}",
                hint="use 0 (off) or the number of days each object must stay undeletable",
            )
        if self.object_lock_mode not in ("governance", "compliance"):
            raise ConfigError(
                f"storage.object_lock_mode = {self.object_lock_mode!r}",
                hint="use governance (bypassable with s3:BypassGovernanceRetention) or "
                "compliance (nobody, not even the account root, can delete early)",
            )


@dataclass
class KeysConfig:
    """Which KEK wraps the per-backup data keys."""

    provider: str = "keyfile"
    keyfile: str = "/etc/ebk/kek.json"
    # Offline recovery keys: X25519 public recipients ("ebkrecovery1..."), each
    # gets a slot in every new backup; `ebk keys recovery-keygen` makes one.
    recovery_recipients: list[str] = field(default_factory=list)
    # The key policy (docs/key-management.md): `ebk keys status` and the daemon's `keys`
    # job say a rotation is due this long after the current KEK version was made ...
    rotation_period: str = "180d"
    # ... and an old version may be retired this long after every backup was re-wrapped.
    retire_after: str = "30d"
    rewrap_workers: int = 8  # concurrent KMS requests of `ebk keys rewrap`
    rewrap_rate: float = 200.0  # at most this many KMS requests per second (0: no limit)

    def validate(self) -> None:
        if parse_duration(self.rotation_period, "keys.rotation_period") < 86400:
            raise ConfigError(
                f"keys.rotation_period = {self.rotation_period!r} is shorter than a day",
                hint='the policy is 6 months: "180d"',
            )
        parse_duration(self.retire_after, "keys.retire_after")
        if not 1 <= self.rewrap_workers <= 64:
            raise ConfigError(f"keys.rewrap_workers = {self.rewrap_workers}", hint="use 1..64")
        if self.rewrap_rate < 0:
            raise ConfigError(f"keys.rewrap_rate = {self.rewrap_rate}", hint="use >= 0 (0: off)")
        if self.provider not in ("keyfile", "vault", "awskms"):
            raise ConfigError(
                f"keys.provider = {self.provider!r} is not a known provider",
                hint="use one of: keyfile, vault, awskms",
            )
        from ebk.keys.recovery import parse_recipient

        for recipient in self.recovery_recipients:
            parse_recipient(recipient, where="keys.recovery_recipients")


@dataclass
class VaultConfig:
    """Vault / OpenBao Transit (keys.provider = "vault"); the token never goes here."""

    address: str = ""  # empty: $VAULT_ADDR
    mount: str = "transit"
    transit_key: str = ""  # created with derived=true (see docs/key-management.md)
    namespace: str = ""
    auth: str = "token"  # token | approle | kubernetes
    token_file: str = ""  # auth=token: a 0600 file; empty: $VAULT_TOKEN
    auth_mount: str = ""  # empty: "approle" or "kubernetes"
    role_id: str = ""  # auth=approle
    secret_id_file: str = ""  # auth=approle: a 0600 file; empty: $VAULT_SECRET_ID
    kubernetes_role: str = ""  # auth=kubernetes
    jwt_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_cert: str = ""  # PEM bundle for TLS; empty: the system store
    timeout: float = 10.0  # seconds per request
    retries: int = 2  # extra attempts when unreachable or 5xx (never when sealed)

    def validate(self) -> None:
        if self.auth not in ("token", "approle", "kubernetes"):
            raise ConfigError(
                f"vault.auth = {self.auth!r}", hint="use token, approle or kubernetes"
            )
        if not 0 < self.timeout <= 300:
            raise ConfigError(f"vault.timeout = {self.timeout}", hint="use 0 < seconds <= 300")
        if not 0 <= self.retries <= 10:
            raise ConfigError(f"vault.retries = {self.retries}", hint="use 0..10")


@dataclass
class AwsKmsConfig:
    """AWS KMS (keys.provider = "awskms")."""

    key_id: str = ""  # key id, alias/NAME or ARN; credentials come from the AWS chain
    # Earlier keys whose slots may still be unwrapped (after moving to a new key_id); a
    # slot naming any other key is refused, whatever the (unauthenticated) slot says.
    previous_key_ids: list[str] = field(default_factory=list)
    region: str = ""  # empty: the AWS chain (AWS_REGION, profile)
    endpoint_url: str = ""  # a VPC endpoint, or a test server
    profile: str = ""
    timeout: float = 10.0  # seconds, connect and read
    retries: int = 2  # extra attempts (botocore standard mode)

    def validate(self) -> None:
        if not 0 < self.timeout <= 300:
            raise ConfigError(f"awskms.timeout = {self.timeout}", hint="use 0 < seconds <= 300")
        if not 0 <= self.retries <= 10:
            raise ConfigError(f"awskms.retries = {self.retries}", hint="use 0..10")


@dataclass
class PreflightConfig:
    """Volume-encryption preflight: require | warn | off."""

    # Owned by the preflight work (issue 5).
    policy: str = "warn"
    """require: backup/restore refuse when a path is not proven encrypted; warn: log; off."""
    extra_paths: list[str] = field(default_factory=list)
    """More directories that hold database bytes (archive_command targets, dumps, logs)."""
    spool_dir: str = ""
    """ebk's own spool/state directory, checked when set (the core streams and spools nothing)."""
    cloud: bool = True
    """Ask EC2 / GCE / Azure APIs about cloud disks (only for disks sysfs identifies)."""
    aws_region: str = ""
    ec2_endpoint_url: str = ""
    kubernetes: bool = True
    """Inside a pod, follow PVC -> PV -> StorageClass through the API server."""
    timeout: float = 5.0
    """Seconds per metadata/API request."""

    def validate(self) -> None:
        if self.policy not in ("require", "warn", "off"):
            raise ConfigError(
                f"preflight.policy = {self.policy!r}", hint="use require, warn or off"
            )
        for path in [*self.extra_paths, *([self.spool_dir] if self.spool_dir else [])]:
            if not path.startswith("/"):
                raise ConfigError(
                    f"preflight path {path!r} is not absolute",
                    hint="give extra_paths and spool_dir as absolute paths",
                )
        if not 0 < self.timeout <= 120:
            raise ConfigError("preflight.timeout must be between 0 and 120 seconds")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, where: str) -> float:
    """Seconds from "90s", "15m", "36h", "7d", "2w" or a bare number of seconds."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _DURATION_UNITS else "s"
    number = raw[:-1] if raw[-1:] in _DURATION_UNITS else raw
    try:
        value = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        value = -1.0
    if value < 0 or value != value:
        raise ConfigError(
            f"{where} = {text!r} is not a duration",
            hint='write a number with a unit: "90s", "15m", "36h", "7d", "2w"',
        )
    return value


@dataclass
class JobConfig:
    """One scheduled job: a `[[daemon.jobs]]` table.

    kind: physical | logical | retention (later issues register more kinds).
    Exactly one of cron (5 fields "min hour dom month dow", or 6 fields with
    seconds first, in daemon.timezone; day of week 0 and 7 are Sunday as in
    crontab) or interval_seconds.  name defaults to the kind and must be unique.
    """

    kind: str = ""
    name: str = ""
    cron: str = ""
    interval_seconds: int = 0
    databases: list[str] = field(default_factory=list)  # logical: as `ebk backup --database`

    def validate(self) -> None:
        if not self.kind:
            raise ConfigError(
                "a [[daemon.jobs]] table has no kind",
                hint='set kind = "physical", "logical" or "retention"',
            )
        self.name = self.name or self.kind
        if not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(
                f"daemon job name {self.name!r} has characters other than "
                "letters, digits, '-', '_' and '.'"
            )
        if bool(self.cron.strip()) == (self.interval_seconds > 0):
            raise ConfigError(
                f"daemon job {self.name!r} needs exactly one of cron and interval_seconds",
                hint='e.g. cron = "0 2 * * *" (daily 02:00) or interval_seconds = 3600',
            )
        if self.interval_seconds < 0:
            raise ConfigError(f"daemon job {self.name!r}: interval_seconds must be positive")
        if not all(isinstance(d, str) and d for d in self.databases):
            raise ConfigError(f"daemon job {self.name!r}: databases must be database names")


@dataclass
class DaemonConfig:
    """The long-running scheduler (`ebk daemon`)."""

    listen: str = "127.0.0.1:9187"  # /healthz, /readyz, /metrics; loopback unless you mean it
    state_dir: str = "/var/lib/ebk/daemon"  # last run per job, so a missed run runs once at start
    timezone: str = "UTC"  # of the cron expressions
    # A run delayed longer than this (the one worker busy with a long job) is skipped;
    # 0: never skipped, it runs late (coalesced, so never more than once).
    misfire_grace_seconds: int = 0
    shutdown_timeout_seconds: float = 10.0  # SIGTERM: time for a running job to clean up
    jobs: list[JobConfig] = field(default_factory=list)

    def validate(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(
                f"daemon.listen = {self.listen!r} is not HOST:PORT",
                hint='e.g. "127.0.0.1:9187", or "[::1]:9187"',
            )
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"daemon.timezone = {self.timezone!r} is not a known time zone",
                hint='use an IANA name such as "UTC" or "Europe/Berlin"',
            ) from None
        if self.misfire_grace_seconds < 0:
            raise ConfigError("daemon.misfire_grace_seconds must be >= 0")
        if not 0 < self.shutdown_timeout_seconds <= 3600:
            raise ConfigError("daemon.shutdown_timeout_seconds must be > 0 and <= 3600")
        seen: set[str] = set()
        for job in self.jobs:
            if job.name in seen:
                raise ConfigError(
                    f"two daemon jobs are named {job.name!r}",
                    hint="give each [[daemon.jobs]] table a distinct name",
                )
            seen.add(job.name)


@dataclass
class RetentionConfig:
    """Which complete backups `ebk retention` and the daemon's retention job keep.

    Applied per kind and cluster.  A backup is kept when any rule keeps it; the
    newest complete backup is always kept.  Days, ISO weeks and months are UTC.
    """

    keep_last: int = 7  # the N newest
    keep_daily: int = 7  # the newest of each of the N most recent days that have a backup
    keep_weekly: int = 4  # ... of each of the N most recent ISO weeks with a backup
    keep_monthly: int = 6  # ... of each of the N most recent months with a backup
    min_age: str = "1d"  # backups younger than this are never deleted ("0" disables)
    pitr_window: str = "0"  # physical backups and WAL kept for PITR this far back; "0": off

    def validate(self) -> None:
        for key in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly"):
            if not 0 <= getattr(self, key) <= 100000:
                raise ConfigError(f"retention.{key} = {getattr(self, key)} must be 0..100000")
        parse_duration(self.min_age, "retention.min_age")
        parse_duration(self.pitr_window, "retention.pitr_window")


@dataclass
class WalConfig:
    """Continuous WAL archiving (`ebk wal-push`, `ebk wal-fetch`) and point-in-time recovery."""

    compression_level: int = 3  # zstd level of archived WAL; 0 = off
    key_rotation: str = "1d"  # a new WAL data key after this long ...
    key_rotation_bytes: int = 64 * 1024**3  # ... or after this many WAL bytes (per process)
    socket: str = ""  # the daemon's wal-push socket; empty: <daemon.state_dir>/wal.sock
    socket_group: str = ""  # "": mode 0600; else mode 0660 and this group (PostgreSQL's user)
    prefetch: int = 4  # wal-fetch: segments fetched ahead (encrypted) for the next calls
    push_ahead: int = 2  # daemon: ready segments archived concurrently ahead of PostgreSQL
    max_slot_retained_bytes: int = 8 * 1024**3  # /readyz fails when a slot holds more; 0: off
    rpo: str = "60s"  # /readyz turns not ready when the newest archived WAL is older
    # "archive_command": PostgreSQL pushes through `ebk wal-push`; "stream": the daemon
    # streams WAL from the physical replication slot wal.slot (RPO of seconds).  One at a time.
    mode: str = "archive_command"
    slot: str = "ebk"  # stream mode: the physical slot (created when missing)
    stream_flush_interval: str = "2s"  # stream mode: store the partial segment this often

    def validate(self) -> None:
        if self.mode not in ("archive_command", "stream"):
            raise ConfigError(
                f"wal.mode = {self.mode!r} is not a WAL mode",
                hint='use "archive_command" or "stream"',
            )
        if not re.fullmatch(r"[a-z0-9_]{1,63}", self.slot):
            raise ConfigError(
                f"wal.slot = {self.slot!r} is not a replication slot name",
                hint="use 1-63 lower-case letters, digits or underscores",
            )
        if (
            not 0.2
            <= parse_duration(self.stream_flush_interval, "wal.stream_flush_interval")
            <= 3600
        ):
            raise ConfigError("wal.stream_flush_interval must be between 0.2s and 1h")
        if not 0 <= self.compression_level <= 22:
            raise ConfigError(f"wal.compression_level = {self.compression_level} must be 0..22")
        if parse_duration(self.key_rotation, "wal.key_rotation") < 60:
            raise ConfigError("wal.key_rotation must be at least 60s")
        if self.key_rotation_bytes < 16 * 1024**2:
            raise ConfigError("wal.key_rotation_bytes must be at least 16 MiB (16777216)")
        if not 0 <= self.prefetch <= 64:
            raise ConfigError(f"wal.prefetch = {self.prefetch} must be 0..64")
        if not 0 <= self.push_ahead <= 16:
            raise ConfigError(f"wal.push_ahead = {self.push_ahead} must be 0..16")
        parse_duration(self.rpo, "wal.rpo")


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


MAX_RATE_KB = (32, 1024 * 1024)  # BASE_BACKUP accepts 32 kB/s .. 1 GB/s


def parse_max_rate(text: str) -> int:
    """'' or '0': unlimited; '800k', '50M' (per second) or a number of kB/s, like
    pg_basebackup --max-rate."""
    raw = text.strip()
    if raw in ("", "0"):
        return 0
    factor = {"k": 1, "K": 1, "m": 1024, "M": 1024}.get(raw[-1], 0)
    number = raw[:-1] if factor else raw
    try:
        kb = int(number) * (factor or 1)
    except ValueError:
        kb = -1
    if not MAX_RATE_KB[0] <= kb <= MAX_RATE_KB[1]:
        raise ConfigError(
            f"backup.max_rate = {text!r} is not a rate PostgreSQL accepts",
            hint="use '' (unlimited), or 32k to 1024M per second, e.g. '50M'",
        )
    return kb


@dataclass
class BackupConfig:
    """How backups are made."""

    compression_level: int = 3
    compression_threads: int = 0
    compression_location: str = "auto"
    max_rate: str = ""
    databases: list[str] = field(default_factory=list)

    @property
    def max_rate_kb(self) -> int:
        """backup.max_rate in kB/s as BASE_BACKUP's MAX_RATE wants it; 0 = unlimited.

        The server throttles the bytes it sends: compressed ones when it compresses."""
        return parse_max_rate(self.max_rate)

    def validate(self) -> None:
        if self.compression_location not in ("server", "client", "auto"):
            raise ConfigError(
                f"backup.compression_location = {self.compression_location!r}",
                hint="use server (PostgreSQL compresses), client (ebk compresses) or auto "
                "(server on the database host, client when it is remote)",
            )
        parse_max_rate(self.max_rate)
        if not 0 <= self.compression_level <= 19:
            raise ConfigError(
                f"backup.compression_level = {self.compression_level} is out of range",
                hint="use 0 (off) to 19; 1-3 is fast and usually right for backups",
            )
        if not 0 <= self.compression_threads <= 64:
            raise ConfigError("backup.compression_threads must be 0..64")


@dataclass
class VerifyConfig:
    """Restore verification (`ebk verify`, the daemon's verify job)."""

    scratch_dir: str = "/var/lib/ebk/verify"
    """Where restores are checked: holds PLAINTEXT database files while a verify runs, so
    the preflight applies to it (it must be on an encrypted volume under `require`)."""
    max_duration: str = "6h"
    """The budget of one verification run (the daemon job; pg_amcheck gets what is left)."""
    amcheck_budget: str = "1h"
    """At most this long for pg_amcheck; past it the check is recorded as incomplete."""
    start_timeout: str = "30m"
    """Starting the scratch PostgreSQL (WAL replay of the backup) may take this long."""
    max_age: str = "8d"
    """/readyz says not ready when the newest verified backup is older (0: never)."""

    def validate(self) -> None:
        if not self.scratch_dir.startswith("/"):
            raise ConfigError(
                f"verify.scratch_dir {self.scratch_dir!r} is not absolute",
                hint="give an absolute directory on an encrypted volume",
            )
        for key in ("max_duration", "amcheck_budget", "start_timeout", "max_age"):
            parse_duration(getattr(self, key), f"verify.{key}")


@dataclass
class LogConfig:
    """Logging: JSON when stderr is not a terminal, unless format says otherwise."""

    level: str = "info"
    format: str = "auto"

    def validate(self) -> None:
        if self.level not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"log.level = {self.level!r}", hint="use debug, info, warning or error"
            )
        if self.format not in ("auto", "json", "console"):
            raise ConfigError(f"log.format = {self.format!r}", hint="use auto, json or console")


@dataclass
class VolumeConfig:
    """Where `ebk volume` keeps the wrapped volume key objects (never a plaintext key)."""

    key_dir: str = "/var/lib/ebk/volumes"  # ebk's state directory, mode 0700
    # key_dir | beside: an fscrypt directory's object next to it (PARENT/.NAME.ebk-volume.json);
    # LUKS objects always live in key_dir.
    key_placement: str = "key_dir"

    def validate(self) -> None:
        if self.key_placement not in ("key_dir", "beside"):
            raise ConfigError(
                f"volume.key_placement = {self.key_placement!r}", hint="use key_dir or beside"
            )
        if not self.key_dir.startswith("/"):
            raise ConfigError(
                f"volume.key_dir = {self.key_dir!r} is not absolute",
                hint="give an absolute path, e.g. /var/lib/ebk/volumes",
            )


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
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    wal: WalConfig = field(default_factory=WalConfig)
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
    values = dict(values)
    for key, value in values.items():
        item_type = (typing.get_args(hints[key]) or (None,))[0]
        if isinstance(value, list) and dataclasses.is_dataclass(item_type):
            # An array of tables ([[daemon.jobs]]): each item is built like a section.
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    raise ConfigError(
                        f"{section}.{key}[{i}] must be a table, not {item!r}",
                        hint=f"write it as a [[{section}.{key}]] table",
                    )
            values[key] = [
                _build_section(item_type, item, f"{section}.{key}[{i}]")  # type: ignore[arg-type]
                for i, item in enumerate(value)
            ]
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
                f"environment variable {ENV_PREFIX}{section.upper()}__… names unknown "
                f"section {section!r}",
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
