"""Retention's verification rule: the newest backup proven by a restore is never deleted.

Per (cluster, kind): of the backups with an authentic, passing ``restore``
verification record, the newest is kept, whatever the other rules say, so
a run of failed or unverified backups can never leave the repository without
one that is known to restore.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ebk.manifest import Manifest
from ebk.repository import Repository

if TYPE_CHECKING:
    from ebk.app.retention import Decision

REASON = "newest backup that passed a restore verification"


def keep_newest_verified(
    repo: Repository, backups: Sequence[Manifest], decisions: list[Decision]
) -> list[Decision]:
    """``decisions`` with the newest restore-verified backup of each group kept."""
    verified = repo.verifications().latest([m.backup_id for m in backups])
    protected: set[str] = set()
    seen: set[tuple[str, str]] = set()
    for m in reversed(backups):  # newest first (the catalog is oldest first)
        group = (m.system_identifier, m.kind)
        if group not in seen and verified[m.backup_id].restore is not None:
            seen.add(group)
            protected.add(m.backup_id)
    out = []
    for d in decisions:
        if d.backup_id in protected:
            reasons = d.reasons if d.keep else ()
            d = dataclasses.replace(d, keep=True, reasons=(*reasons, REASON))
        out.append(d)
    return out
