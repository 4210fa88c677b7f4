"""The `ebk` command line.

Output contract: stdout carries only the command's result (a table, or JSON
under --json); logs go to stderr; an error is one message, a hint and its exit
code (the stable table in ebk.errors.EXIT_CODES, shown by `ebk --help`).
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
from ebk.errors import EbkError, Interrupted, exit_code_info, exit_codes_text
from ebk.logsetup import LEVEL_OVERRIDE, configure_logging
from ebk.memory import bound_allocator
from ebk.text import printable

DEFAULT_CONFIG = Path("/etc/ebk/ebk.toml")


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}; partial work was cleaned up")


NO_CONFIG_NOTE = (
    "no config file was found (--config, $EBK_CONFIG, /etc/ebk/ebk.toml): "
    "built-in defaults were used"
)


def report_error(exc: EbkError, *, no_config: bool) -> None:
    """One message, a hint and the exit code, on stderr."""
    info = exit_code_info(exc.exit_code)
    lines = [f"ebk: error: {printable(exc.message, newlines=True)}"]
    hint = exc.hint or info.hint
    if hint:
        lines.append(f"  hint: {printable(hint, newlines=True)}")
    if no_config:
        lines.append(f"  note: {NO_CONFIG_NOTE}")
    lines.append(f"  exit code {exc.exit_code}: {info.meaning}")
    click.echo("\n".join(lines), err=True)


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
    "volume": "volume",
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
            # Without --quiet, main() already logged that no config file was found.
            quiet = ctx.meta.get(LEVEL_OVERRIDE) == "warning"
            report_error(exc, no_config=ctx.obj is None and quiet)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            stop = Interrupted("interrupted by SIGINT; partial work was cleaned up")
            report_error(stop, no_config=False)
            sys.exit(stop.exit_code)


EPILOG = "\b\nExit codes (stable, for scripts and CronJobs):\n" + exit_codes_text()


@click.group(
    cls=EbkGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EPILOG,
)
@click.option(
    "--config",
    "config_path",
    envvar="EBK_CONFIG",
    metavar="PATH",
    help="Config file (TOML). Default: $EBK_CONFIG, else /etc/ebk/ebk.toml if present, "
    "else built-in defaults. EBK_<SECTION>__<KEY> variables override single keys.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level; show error details.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
@click.version_option(ebk.__version__, prog_name="ebk")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool, quiet: bool) -> None:
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

    Output: results (tables, or JSON with --json) on stdout; logs on stderr,
    human-readable at a terminal and JSON lines otherwise, at log.level (info)
    unless --verbose or --quiet.

    \b
    Examples:
      ebk --config /etc/ebk/ebk.toml list --json
      ebk --verbose preflight
      EBK_REPOSITORY__URL=s3://bucket/prefix ebk list
    """
    if verbose and quiet:
        raise click.UsageError("give at most one of --verbose and --quiet")
    if verbose or quiet:
        ctx.meta[LEVEL_OVERRIDE] = "debug" if verbose else "warning"
    configure_logging()  # until a command loads the config: stderr, never stdout
    bound_allocator()
    ctx.obj = _config_path(config_path)
    if ctx.obj is None and ctx.invoked_subcommand is not None:
        structlog.get_logger("ebk").info(NO_CONFIG_NOTE)
