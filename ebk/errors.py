"""One error hierarchy for ebk.

Every error carries a message written for the operator (what is wrong and how
to fix it) and an exit code that scripts can rely on.  Secrets never appear in
messages: callers pass names and paths, never key material or tokens.
"""

from __future__ import annotations


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
