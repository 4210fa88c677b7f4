"""`ebk daemon`: scheduled jobs as a service."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ebk.errors import PreflightFailed


@click.command()
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="Run the startup checks and exit, writing nothing: 0 means the daemon would start.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="With --check: treat warnings (preflight findings under policy 'warn') as "
    "failures, exit 6.",
)
@click.pass_obj
def daemon(config_path: Path | None, check_only: bool, strict: bool) -> None:
    """Run scheduled backups and retention until SIGTERM.

    Jobs come from [[daemon.jobs]] tables in the config, each with a kind
    (physical, logical, retention) and either cron (5 fields, or 6 with
    seconds first; in daemon.timezone, default UTC) or interval_seconds:

    \b
      [[daemon.jobs]]
      kind = "physical"
      cron = "0 2 * * *"          # daily at 02:00
      [[daemon.jobs]]
      kind = "retention"
      cron = "30 3 * * *"

    A run missed while the daemon was down runs once at start. Backups go the
    same way as `ebk backup` (preflight, key check, cluster lock). The daemon
    refuses to start (exit 2/3/4/6, as below) unless the config is valid, the
    key provider round trip works, the repository is reachable and the
    preflight passes.

    \b
    Signals: SIGTERM/SIGINT stop scheduling and abort a running backup (its
    upload is discarded, nothing is listed); exit 0 within
    daemon.shutdown_timeout_seconds (10), else 130. SIGHUP reloads the config;
    an invalid one is logged and the running one kept.

    \b
    HTTP on daemon.listen (127.0.0.1:9187): /healthz, /readyz (the reason
    when not ready), /metrics (Prometheus: ebk_job_last_success_timestamp_seconds,
    ebk_job_last_duration_seconds, ebk_job_last_bytes, ebk_job_failures_total,
    ebk_job_next_run_timestamp_seconds, ... per job).

    For a Kubernetes CronJob use `ebk backup` instead (exit codes: `ebk --help`;
    only 0 means a backup was listed).

    \b
    Examples:
      ebk daemon --check
      ebk daemon --check --strict
      ebk --config /etc/ebk/ebk.toml daemon
    """
    from ebk.daemon.service import Daemon

    service = Daemon(config_path)
    if strict and not check_only:
        raise click.UsageError("--strict applies to --check only")
    if check_only:
        passed = service.check(service.load(), dry_run=True)
        warned = dict(service.warnings)
        for name, detail in passed:
            if name in warned:
                click.echo(f"warn {name}: {warned[name]}")
            else:
                click.echo(f"ok  {name}: {detail}")
        if warned and strict:
            click.echo("the daemon would start, but --strict refuses its warnings")
            sys.exit(PreflightFailed.exit_code)
        suffix = f", with {len(warned)} warning(s)" if warned else ""
        click.echo(f"the daemon would start{suffix}")
        return
    code = service.serve()
    if code:
        sys.exit(code)


COMMANDS: list[click.Command] = [daemon]
