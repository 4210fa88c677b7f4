"""Volume errors, placed under the existing exit codes (ebk/errors.py)."""

from __future__ import annotations

from ebk.errors import ConfigError, LockBusy, PreflightFailed


class NotAnEncryptedVolume(PreflightFailed):
    """The path has no fscrypt policy / the device has no LUKS2 header (exit 6)."""


class VolumeUsageError(ConfigError):
    """The volume cannot be used as asked: not empty, already formatted, tool missing (exit 2)."""


class VolumeBusy(LockBusy):
    """Files or a mount still use the volume, so it cannot be locked completely (exit 8)."""
