"""Printing results: tables for people, JSON for machines (--json)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from ebk.text import printable


def emit_json(data: Any) -> None:
    """Indented for a person at a terminal; compact (and fast: C encoder) for a pipe."""
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(data, indent=indent, sort_keys=True, default=str))


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Cells may come from the repository: every one is escaped for the terminal."""
    cells = [[printable(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
