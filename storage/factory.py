"""Turn a repository URL into a Storage backend."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ebk.errors import ConfigError
from ebk.storage.base import Storage


def open_storage(url: str, options: dict[str, object] | None = None) -> Storage:
    """Open the backend a repository URL names; commands never import a driver."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"repository.url {url!r}: file URLs name a local path",
                hint="write file:///absolute/path (three slashes)",
            )
        if not parsed.path.startswith("/"):
            raise ConfigError(f"repository.url {url!r}: the path must be absolute")
        from ebk.storage.local import LocalStorage

        return LocalStorage(Path(parsed.path))
    raise ConfigError(
        f"repository.url {url!r}: unsupported scheme {parsed.scheme!r}",
        hint="use file:///path, s3://bucket/prefix, gs://bucket/prefix or azure://container/prefix",
    )
