"""Job kinds: what a `[[daemon.jobs]]` table with a given ``kind`` does.

A registry maps kind -> JobKind; the daemon builds one with ``default_registry()``
and later work (restore verification, key rotation, WAL housekeeping) adds
entries the same way: ``registry["verify"] = JobKind(run_verify, validate=...)``.
A job's ``run`` gets a JobContext (the current Runtime, its JobConfig, the
daemon's cancel flag) and returns a JobResult; it raises EbkError on failure
and Interrupted when it stopped because ``cancel`` was set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ebk.app.backup import run_backup as take_backup_now
from ebk.app.keylife import record_event
from ebk.app.retention import RetentionPolicy, apply_retention
from ebk.config import Config, JobConfig
from ebk.errors import ConfigError
from ebk.runtime import Runtime


@dataclass
class JobContext:
    runtime: Runtime
    job: JobConfig
    cancel: threading.Event
    log: Any  # a structlog logger bound to the job


@dataclass
class JobResult:
    nbytes: int = 0  # the figure ebk_job_last_bytes reports
    backup_id: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class JobKind:
    run: Callable[[JobContext], JobResult]
    validate: Callable[[JobConfig, Config], None] | None = None
    uses_cluster: bool = False  # startup runs the preflight gate when a job touches the cluster
    summary: str = ""


Registry = dict[str, JobKind]


def run_backup(ctx: JobContext) -> JobResult:
    """The same application call as `ebk backup` (ebk.app.backup.run_backup)."""
    manifest = take_backup_now(
        ctx.runtime,
        kind=ctx.job.kind,
        databases=ctx.job.databases,
        progress=False,
        cancel=ctx.cancel,
    )
    return JobResult(
        manifest.stored_size,
        manifest.backup_id,
        f"{manifest.kind} backup of {manifest.plain_size} bytes",
    )


def run_retention(ctx: JobContext) -> JobResult:
    policy = RetentionPolicy.from_config(ctx.runtime.config.retention)
    result = apply_retention(
        ctx.runtime.repository, policy, cancel=ctx.cancel, purpose=f"daemon job {ctx.job.name}"
    )
    if result.deleted:
        record_event(ctx.runtime, "shred", {"backup_ids": result.deleted[:200], "by": ctx.job.name})
    kept = sum(1 for d in result.decisions if d.keep)
    from ebk.app.walretention import prune_wal  # the WAL archive (issue 13)

    wal = prune_wal(ctx.runtime, cancel=ctx.cancel)
    return JobResult(
        result.freed_bytes,
        None,
        f"deleted {len(result.deleted)} backups and {len(wal)} WAL files, kept {kept} "
        f"({policy.describe()})",
    )


def _validate_physical(job: JobConfig, config: Config) -> None:
    del config
    if job.databases:
        raise ConfigError(f"daemon job {job.name!r}: databases applies to logical jobs only")


def _validate_retention(job: JobConfig, config: Config) -> None:
    del config
    if job.databases:
        raise ConfigError(
            f"daemon job {job.name!r}: retention takes no databases",
            hint="retention applies [retention] to every complete backup",
        )


def default_registry() -> Registry:
    return {
        "physical": JobKind(
            run_backup,
            _validate_physical,
            uses_cluster=True,
            summary="physical base backup (as `ebk backup --type physical`)",
        ),
        "incremental": JobKind(
            run_backup,
            _validate_physical,
            uses_cluster=True,
            summary="incremental physical backup, PostgreSQL 17+ (as `ebk backup --type "
            "incremental`; a full one when there is nothing to build on)",
        ),
        "logical": JobKind(
            run_backup,
            None,
            uses_cluster=True,
            summary="pg_dump of databases (as `ebk backup --type logical`)",
        ),
        "retention": JobKind(
            run_retention, _validate_retention, summary="delete backups [retention] does not keep"
        ),
    }
