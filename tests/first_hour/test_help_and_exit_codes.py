"""Every command and subcommand teaches with examples, and the exit codes read the same in
`ebk --help`, README.md and docs/operations.md: all generated from ebk.errors.EXIT_CODES."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ebk import errors
from ebk.cli import COMMAND_MODULES, main

ROOT = Path(__file__).resolve().parents[2]


def every_command_path() -> list[tuple[str, ...]]:
    ctx = click.Context(main)
    paths: list[tuple[str, ...]] = [()]

    def walk(path: tuple[str, ...], command: click.Command) -> None:
        paths.append(path)
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                walk((*path, name), sub)

    for name in COMMAND_MODULES:
        command = main.get_command(ctx, name)
        assert command is not None
        walk((name,), command)
    return paths


@pytest.mark.parametrize("path", every_command_path(), ids=lambda p: " ".join(p) or "ebk")
def test_help_has_examples(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Examples:" in text, f"ebk {' '.join(path)} --help has no Examples section"
    examples = text.split("Examples:", 1)[1].splitlines()[1:]
    commands = [line.strip() for line in examples if line.strip().startswith(("ebk ", "EBK_"))]
    assert commands, text
    for command in commands:  # every example names a real command path
        words = [w for w in command.split() if not w.startswith("EBK_")][1:]
        assert words, command


def _help_table() -> list[tuple[int, str]]:
    text = CliRunner().invoke(main, ["--help"]).stdout
    rows = re.findall(r"^\s+(\d+)  (.+)$", text.split("Exit codes", 1)[1], re.MULTILINE)
    return [(int(code), meaning.strip()) for code, meaning in rows]


def _markdown_table(path: Path) -> list[tuple[int, str]]:
    text = path.read_text()
    begin = text.index("<!-- exit-codes:")
    block = text[begin : text.index("<!-- /exit-codes -->", begin)]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|", block, re.MULTILINE)
    return [(int(code), meaning) for code, meaning in rows]


def test_exit_codes_are_the_same_everywhere() -> None:
    table = [(e.code, e.meaning) for e in errors.EXIT_CODES]
    assert _help_table() == table
    for doc in (ROOT / "README.md", ROOT / "docs" / "operations.md"):
        assert _markdown_table(doc) == table, f"{doc}: run scripts/gen_exit_codes.py"
        assert errors.exit_codes_markdown() in doc.read_text()
    assert 1 in dict(table) and "unexpected" in dict(table)[1]


def test_every_error_class_has_a_documented_exit_code() -> None:
    codes = {e.code for e in errors.EXIT_CODES}
    classes = [c for c in vars(errors).values() if isinstance(c, type)]
    for cls in classes:
        if issubclass(cls, errors.EbkError):
            assert cls.exit_code in codes, cls
