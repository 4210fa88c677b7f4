"""structlog configuration: logs go to stderr, human on a terminal and JSON lines otherwise.

The level comes from log.level (default info) unless `ebk --verbose` (debug) or
`ebk --quiet` (warning) was given: the CLI puts that choice in the click
context's meta, which every command of the invocation shares.
"""

from __future__ import annotations

import logging
import sys

import click
import structlog

from ebk.text import printable

LEVEL_OVERRIDE = "ebk.log_level"


def cli_level() -> str | None:
    """The level chosen on the command line (--verbose/--quiet), if any."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.meta.get(LEVEL_OVERRIDE)


def verbose() -> bool:
    """True under `ebk --verbose`: show details (full driver errors) in human output."""
    return cli_level() == "debug"


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog once per process; logs go to stderr, data never does."""
    level = cli_level() or level
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # JSON escapes control characters itself; console lines need it done for them.
    escape: list[structlog.typing.Processor] = [] if use_json else [_escape_for_terminal]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *escape,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _escape_for_terminal(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Log values may quote repository strings (object names, backup ids)."""
    return {
        key: printable(value, newlines=key == "exception") if isinstance(value, str) else value
        for key, value in event.items()
    }
