"""Locks: one backup of a cluster at a time; one deleter per repository."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ebk.config import PostgresConfig


@contextmanager
def cluster_backup_lock(cfg: PostgresConfig) -> Iterator[None]:
    """Held for the length of one backup (a PostgreSQL advisory lock; issue 6 fills it in)."""
    del cfg
    yield
