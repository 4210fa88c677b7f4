"""Verdicts: what preflight found for each path, in a shape both people and machines read."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Status(enum.StrEnum):
    """Unknown counts as unencrypted: only proof passes."""

    ENCRYPTED = "encrypted"
    UNENCRYPTED = "unencrypted"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Evidence:
    """One detector's finding about one layer (a directory policy, a block device, a disk)."""

    status: Status
    layer: str
    detail: str
    cipher: str = ""
    key_location: str = ""

    def to_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Target:
    """A path that will hold database bytes, and why it is checked."""

    role: str
    path: str
    label: str = ""
    must_exist: bool = True
    fix: str = ""
    unresolved: str = ""  # why path is empty (one line), shown as the evidence


@dataclass
class PathVerdict:
    """The verdict for one target: encrypted only when some layer is proven encrypted."""

    target: Target
    resolved: str = ""
    mount_point: str = ""
    fstype: str = ""
    source: str = ""
    device_stack: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    note: str = ""

    @property
    def status(self) -> Status:
        statuses = {e.status for e in self.evidence}
        if Status.ENCRYPTED in statuses:
            return Status.ENCRYPTED
        if not statuses or Status.UNKNOWN in statuses:
            return Status.UNKNOWN
        return Status.UNENCRYPTED

    @property
    def passed(self) -> bool:
        return self.status is Status.ENCRYPTED

    def encrypted_by(self) -> list[Evidence]:
        return [e for e in self.evidence if e.status is Status.ENCRYPTED]

    def summary(self) -> str:
        """One line: by what it is encrypted, or why it is not proven."""
        chosen = self.encrypted_by() or [e for e in self.evidence if e.status is self.status]
        if not chosen:
            return self.note or "nothing could be determined"
        return "; ".join(f"{e.layer}: {e.detail}" for e in chosen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.target.role,
            "label": self.target.label,
            "path": self.target.path,
            "resolved": self.resolved,
            "status": str(self.status),
            "passed": self.passed,
            "mount_point": self.mount_point,
            "fstype": self.fstype,
            "source": self.source,
            "device_stack": self.device_stack,
            "evidence": [e.to_dict() for e in self.evidence],
            "note": self.note,
            "summary": self.summary(),
            "fix": "" if self.passed else self.target.fix,
        }


@dataclass
class Report:
    """All verdicts of one preflight run."""

    purpose: str
    verdicts: list[PathVerdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def failing(self) -> list[PathVerdict]:
        return [v for v in self.verdicts if not v.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "passed": self.passed,
            "paths": [v.to_dict() for v in self.verdicts],
        }
