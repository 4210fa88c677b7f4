"""Incremental backup chains: a full physical backup and the incrementals built on it.

Each incremental names its ``parent`` (and the chain's ``chain_root`` and its
``chain_depth``) in its signed manifest.  Restoring one needs every member, so:

- a new incremental builds only on an authenticated (listed, writer-signed)
  physical backup of the same cluster, major and timeline (``choose_parent``);
- a chain is used only after every member's signature verified and every link
  agrees with its parent (``authenticated_chain``): a forged or edited manifest
  fails its signature, a broken or looping link is an integrity error;
- a backup that an authenticated backup builds on is never deleted while that
  one is kept (``refuse_if_needed``; retention keeps whole chains by rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ebk.errors import BackupNotFound, EbkError, IntegrityError
from ebk.manifest import Manifest
from ebk.repository import Repository

# Far beyond any sane schedule (pg_combinebackup reads every member); a bound on a loop
# over documents from a hostile bucket.
MAX_CHAIN_LENGTH = 1000


class BackupNeeded(EbkError):
    """A backup other kept backups build on cannot be deleted alone."""

    exit_code = 2  # a request ebk refuses, like a wrong option: nothing was deleted


def _time(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def lsn(text: str | None) -> int | None:
    """A PostgreSQL LSN ``X/Y`` as an integer (None when absent or malformed)."""
    if not text or "/" not in text:
        return None
    high, _, low = text.partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        return None


def usable_as_parent(m: Manifest, *, cluster: str, major: int, timeline: int) -> str:
    """Why ``m`` cannot be a parent for a backup of this cluster now ('' when it can)."""
    if m.kind != "physical":
        return "not a physical backup"
    if m.system_identifier != cluster:
        return "another cluster"
    if m.major != major:
        return f"PostgreSQL {m.major}, the server is {major}"
    if m.timeline != timeline:
        return f"timeline {m.timeline}, the server is on {timeline}"
    if lsn(m.start_lsn) is None:
        return "no start LSN recorded"
    if not any(o.role == "backup_manifest" for o in m.objects):
        return "no stored backup_manifest"
    return ""


def choose_parent(
    backups: Sequence[Manifest], *, cluster: str, major: int, timeline: int
) -> Manifest | None:
    """The newest authenticated physical backup an incremental can build on, if any.

    ``backups`` must be the listing's authenticated backups (Repository.list_backups),
    never manifests read without their signature.
    """
    usable = [
        m
        for m in backups
        if not usable_as_parent(m, cluster=cluster, major=major, timeline=timeline)
    ]
    return usable[-1] if usable else None


def check_link(child: Manifest, parent: Manifest) -> None:
    """The child's signed claims agree with the parent's own signed manifest."""
    what = f"backup {child.backup_id} builds on backup {parent.backup_id}, but"
    problems = []
    if parent.kind != "physical":
        problems.append(f"that one is a {parent.kind} backup")
    if parent.system_identifier != child.system_identifier:
        problems.append(
            f"that one is of cluster {parent.system_identifier}, not {child.system_identifier}"
        )
    if parent.timeline != child.timeline:
        problems.append(f"that one is on timeline {parent.timeline}, not {child.timeline}")
    if parent.major != child.major:
        problems.append(f"that one is PostgreSQL {parent.major}, not {child.major}")
    parent_lsn, child_lsn = lsn(parent.stop_lsn), lsn(child.start_lsn)
    if parent_lsn is None or child_lsn is None or parent_lsn > child_lsn:
        problems.append("their LSNs are not in order")
    parent_time, child_time = _time(parent.start_time), _time(child.start_time)
    if parent_time is None or child_time is None or parent_time >= child_time:
        problems.append("it is not older")
    expected_root = parent.chain_root or parent.backup_id
    expected_depth = (parent.chain_depth or 0) + 1
    if (child.chain_root, child.chain_depth) != (expected_root, expected_depth):
        problems.append(
            f"the chain recorded ({child.chain_root}, depth {child.chain_depth}) does not "
            f"continue it ({expected_root}, depth {expected_depth})"
        )
    if problems:
        raise IntegrityError(
            f"{what} {'; '.join(problems)}",
            hint="the chain's manifests do not fit together; restore another backup "
            "(`ebk list`) and keep this chain for investigation",
        )


def authenticated_chain(repo: Repository, last: Manifest) -> list[Manifest]:
    """Every member of ``last``'s chain, full backup first, each signature-verified.

    Raises IntegrityError for an unsigned member, a missing parent, a loop, or a
    link whose claims disagree with the parent's own manifest.
    """
    trusted = repo.trusted_writers()
    last.verify_signature(trusted)
    members = [last]
    seen = {last.backup_id}
    current = last
    while current.parent is not None:
        if len(members) >= MAX_CHAIN_LENGTH:
            raise IntegrityError(
                f"the chain of backup {last.backup_id} is longer than {MAX_CHAIN_LENGTH}"
            )
        if current.parent in seen:
            raise IntegrityError(
                f"the chain of backup {last.backup_id} loops back to backup {current.parent}"
            )
        try:
            parent = repo.read_manifest(current.parent)
        except BackupNotFound:
            raise IntegrityError(
                f"backup {current.backup_id} builds on backup {current.parent}, which is not "
                "in the repository: the chain is broken",
                hint="an incremental backup restores only with every backup it builds on; "
                "restore another backup (`ebk list`)",
            ) from None
        parent.verify_signature(trusted)  # also refuses ebk 0.1's unsigned manifests
        check_link(current, parent)
        seen.add(parent.backup_id)
        members.append(parent)
        current = parent
    if last.parent is not None and current.backup_id != last.chain_root:
        raise IntegrityError(
            f"backup {last.backup_id} records chain root {last.chain_root}, but its chain "
            f"starts at backup {current.backup_id}"
        )
    return list(reversed(members))


def dependants(backups: Sequence[Manifest], backup_id: str) -> list[Manifest]:
    """The listed backups that build on ``backup_id``, directly or through others."""
    children: dict[str, list[Manifest]] = {}
    for m in backups:
        if m.parent is not None:
            children.setdefault(m.parent, []).append(m)
    found: list[Manifest] = []
    todo = [backup_id]
    seen = {backup_id}
    while todo:
        for child in children.get(todo.pop(), []):
            if child.backup_id not in seen:
                seen.add(child.backup_id)
                found.append(child)
                todo.append(child.backup_id)
    return found


def refuse_if_needed(repo: Repository, manifest: Manifest) -> None:
    """Refuse to delete a backup that a listed (authenticated) backup builds on."""
    needed_by = dependants(repo.list_backups().backups, manifest.backup_id)
    if needed_by:
        shown = ", ".join(m.backup_id for m in needed_by[:5])
        more = f" and {len(needed_by) - 5} more" if len(needed_by) > 5 else ""
        raise BackupNeeded(
            f"backup {manifest.backup_id} is needed by {len(needed_by)} incremental "
            f"backup(s) built on it ({shown}{more}); deleting it would leave them "
            "unrestorable, so nothing was deleted",
            hint="delete the incremental backups first (newest first), or let `ebk "
            "retention` remove the whole chain once no kept backup needs it",
        )
