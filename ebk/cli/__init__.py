"""The `ebk` command line.

Exit codes (stable, for scripts and Kubernetes CronJobs):
  0 success · 1 unexpected error · 2 usage or config error · 3 key provider
  4 storage · 5 integrity (corrupted, truncated, tampered) · 6 preflight failed
  7 PostgreSQL · 8 lock busy · 9 backup not found · 10 restore target unusable
  130 interrupted (SIGINT/SIGTERM; the partial work was cleaned up)
"""

from __future__ import annotations

import importlib
import signal
import sys
from pathlib import Path
from types import FrameType

import click
import structlog

import ebk
from ebk.errors import EbkError, Interrupted
from ebk.memory import bound_allocator
from ebk.text import printable

DEFAULT_CONFIG = Path("/etc/ebk/ebk.toml")


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}; partial work was cleaned up")


def _config_path(value: str | None) -> Path | None:
    if value:
        return Path(value)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


# Command name -> module that defines it.  Modules are imported only when their
# command runs (or for --help), so `ebk backup` does not pay for the daemon's,
# the preflight's or the cloud SDKs' imports.
COMMAND_MODULES = {
    "init": "setup",
    "backup": "backup",
    "list": "backups",
    "show": "backups",
    "delete": "backups",
    "restore": "restore",
    "repo": "repo",
    "keys": "keys",
    "preflight": "preflight",
    "daemon": "daemon",
    "retention": "retention",
    "bench": "bench",
}


class EbkGroup(click.Group):
    """Loads commands lazily; turns EbkError into one clear line and its exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(f"ebk.cli.{module_name}")
        commands: list[click.Command] = module.COMMANDS
        return next((c for c in commands if c.name == cmd_name), None)

    def invoke(self, ctx: click.Context) -> object:
        signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            return super().invoke(ctx)
        except EbkError as exc:
            structlog.get_logger("ebk").debug("command failed", error=exc.message)
            click.echo(f"ebk: error: {printable(exc, newlines=True)}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("ebk: interrupted; partial work was cleaned up", err=True)
            sys.exit(Interrupted.exit_code)


EXIT_CODES = """\b
Exit codes (stable, for scripts and CronJobs):
  0 success            5 integrity (corrupt/tampered)   9 backup not found
  1 unexpected error   6 preflight: not encrypted       10 restore target unusable
  2 usage or config    7 PostgreSQL                     130 interrupted, cleaned up
  3 key provider       8 lock busy (another ebk)
  4 storage"""


@click.group(
    cls=EbkGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES,
)
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
    bound_allocator()
    ctx.obj = _config_path(config_path)
