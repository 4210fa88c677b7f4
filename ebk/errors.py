"""One error hierarchy for ebk.

Every error carries a message written for the operator (what is wrong and how
to fix it) and an exit code that scripts can rely on.  Secrets never appear in
messages: callers pass names and paths, never key material or tokens.
"""

from __future__ import annotations

from typing import NamedTuple


class ExitCode(NamedTuple):
    code: int
    meaning: str
    hint: str  # said when an error of this kind has no hint of its own
    cause: str = ""  # typical causes, for the docs' table


# The one table of exit codes: `ebk --help`, README.md and docs/operations.md are generated
# from it (scripts/gen_exit_codes.py; tests/first_hour/test_exit_codes.py compares them).
EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "success", "", "`ebk backup`: the backup is complete **and listed**"),
    ExitCode(
        1,
        "unexpected error (a bug: report it with the traceback), or a confirmation declined",
        "run again with --verbose and report the output",
        "a bug in ebk; answering no at `ebk delete`'s prompt",
    ),
    ExitCode(
        2,
        "usage or config error",
        "check the config file and the command's --help",
        "a typo in the TOML, an unknown key, a bad `EBK_*` value, a wrong option",
    ),
    ExitCode(
        3,
        "key provider (key file, Vault, KMS)",
        "run `ebk keys check` for details",
        "Vault sealed/unreachable/denied, KMS denied, key file missing or not mode 0600",
    ),
    ExitCode(
        4,
        "storage (repository unreachable, denied, full)",
        "check repository.url and the storage credentials",
        "bucket missing, credentials, network, disk full; local repository missing",
    ),
    ExitCode(
        5,
        "integrity: corrupted, truncated or tampered data (never retried)",
        "restore another backup (`ebk list`) and keep this one for investigation",
        "a chunk failed authentication: the backup was modified or is corrupt",
    ),
    ExitCode(
        6,
        "preflight: a path is not proven encrypted",
        "run `ebk preflight` to see each path and its fix",
        "a path holding database bytes is not proven encrypted (policy `require`)",
    ),
    ExitCode(
        7,
        "PostgreSQL or its client tools",
        "check [postgres] in the config and the server's log",
        "server down, authentication, missing privilege",
    ),
    ExitCode(
        8,
        "busy: another ebk holds the lock, or a volume to lock is in use",
        "wait for the other run to finish (a volume: stop what uses it, e.g. PostgreSQL)",
        "another backup of the same cluster (or another retention run) is running; "
        "`ebk volume lock` while PostgreSQL still has files open",
    ),
    ExitCode(
        9,
        "backup not found",
        "`ebk list` shows the complete backups",
        "wrong ID, or no complete backup yet",
    ),
    ExitCode(
        10,
        "restore target unusable",
        "restore into a new or empty directory (or a database that does not exist)",
        "target directory not empty, not writable, tablespace map wrong",
    ),
    ExitCode(
        130,
        "interrupted (SIGINT/SIGTERM); partial work cleaned up",
        "",
        "SIGTERM/SIGINT: the running backup's upload was discarded",
    ),
)


def exit_code_info(code: int) -> ExitCode:
    return next((e for e in EXIT_CODES if e.code == code), EXIT_CODES[1])


def exit_codes_text() -> str:
    """The table as plain text, for `ebk --help`."""
    return "\n".join(f"  {e.code:>3}  {e.meaning}" for e in EXIT_CODES)


def exit_codes_markdown() -> str:
    """The table as Markdown, for README.md and docs/operations.md."""
    rows = [f"| {e.code} | {e.meaning} | {e.cause} |" for e in EXIT_CODES]
    return "\n".join(["| Code | Meaning | Typical cause |", "| ---: | --- | --- |", *rows])


class EbkError(Exception):
    """Root of every error ebk reports to an operator."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(EbkError):
    """The configuration file or an EBK_* override is invalid."""

    exit_code = 2


class KeyProviderError(EbkError):
    """A key provider failed: missing key file, KMS unreachable, access denied, wrong key."""

    exit_code = 3


class KeyProviderUnavailable(KeyProviderError):
    """The KMS could not be reached (network, timeout, sealed Vault)."""


class KeyAccessDenied(KeyProviderError):
    """The KMS refused the request: permissions, disabled key, unknown key."""


class WrongKey(KeyProviderError):
    """A wrapped data key did not unwrap: wrong KEK, or the key object belongs elsewhere."""


class StorageError(EbkError):
    """The repository storage failed: unreachable, permission denied, missing bucket."""

    exit_code = 4


class ObjectNotFound(StorageError):
    """A repository object does not exist."""


class ObjectExists(StorageError):
    """A create-if-absent write found the name taken; the existing object was kept."""


class ObjectLocked(StorageError):
    """A repository object is under retention (object lock) and cannot be deleted yet."""


class StorageCredentialsError(StorageError):
    """The object store rejected the credentials: missing, wrong, expired."""


class StoragePermissionDenied(StorageError):
    """The credentials are valid but lack a permission on the bucket or object."""


class BucketNotFound(StorageError):
    """The bucket (S3, GCS) or container (Azure) named by repository.url does not exist."""


class IntegrityError(EbkError):
    """Stored data failed authentication or checksum: corrupted, truncated, tampered.

    Never retried: the bytes will not improve by asking again.
    """

    exit_code = 5


class PreflightFailed(EbkError):
    """A path that holds database bytes is not proven encrypted and policy is 'require'."""

    exit_code = 6


class PostgresError(EbkError):
    """PostgreSQL or one of its client tools failed."""

    exit_code = 7


class LockBusy(EbkError):
    """Another ebk process holds the lock (backup of this cluster, or repository deletion)."""

    exit_code = 8


class BackupNotFound(EbkError):
    """No complete backup matches the id the operator gave."""

    exit_code = 9


class RestoreTargetError(EbkError):
    """The restore target is unusable: not empty, not writable, database exists."""

    exit_code = 10


class RepositoryNotInitialized(StorageError):
    """The repository has no marker: `ebk init` never ran against it."""


class Interrupted(EbkError):
    """The operation was interrupted by a signal and cleaned up."""

    exit_code = 130


class BenchTargetError(EbkError):
    """A benchmark directory is unusable: missing, not empty, not writable, or both
    directories are on the same kind of volume (a usage error)."""

    exit_code = 2
