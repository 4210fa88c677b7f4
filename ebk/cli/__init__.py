"""The `ebk` command line.

Exit codes (stable, for scripts and Kubernetes CronJobs):
  0 success · 1 unexpected error · 2 usage or config error · 3 key provider
  4 storage · 5 integrity (corrupted, truncated, tampered) · 6 preflight failed
  7 PostgreSQL · 8 lock busy · 9 backup not found · 10 restore target unusable
  130 interrupted (SIGINT/SIGTERM; the partial work was cleaned up)
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click
import structlog

import ebk
from ebk.errors import EbkError, Interrupted

DEFAULT_CONFIG = Path("/etc/ebk/ebk.toml")


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}; partial work was cleaned up")


def _config_path(value: str | None) -> Path | None:
    if value:
        return Path(value)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


class EbkGroup(click.Group):
    """Turns EbkError into one clear line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> object:
        signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            return super().invoke(ctx)
        except EbkError as exc:
            structlog.get_logger("ebk").debug("command failed", error=exc.message)
            click.echo(f"ebk: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("ebk: interrupted; partial work was cleaned up", err=True)
            sys.exit(Interrupted.exit_code)


@click.group(cls=EbkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="EBK_CONFIG",
    metavar="PATH",
    help="Config file (TOML). Default: $EBK_CONFIG, else /etc/ebk/ebk.toml if present, "
    "else built-in defaults. EBK_<SECTION>__<KEY> variables override single keys.",
)
@click.version_option(ebk.__version__, prog_name="ebk")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Encrypted backups of PostgreSQL, and the guard of encryption at rest.

    Every backup gets its own data key; the key is wrapped by a KEK that stays
    in the key provider (a local key file by default), and every byte is
    encrypted (AES-256-GCM) inside ebk before it reaches storage.

    \b
    First steps:
      ebk init                      create the key file and the repository
      ebk backup --type physical    take an encrypted base backup
      ebk list                      see complete backups
      ebk restore latest --to DIR   restore into an empty directory
    """
    ctx.obj = _config_path(config_path)


def _register() -> None:
    from ebk.cli import backup, daemon, keys, preflight, repo, repocheck, restore, setup

    for module in (setup, backup, repo, restore, repocheck, keys, preflight, daemon):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
