"""Every command the CLI lists loads, and every module's commands are listed."""

from __future__ import annotations

import importlib

from click.testing import CliRunner

from ebk.cli import COMMAND_MODULES, main
from tests.support.refusal import assert_refused


def test_every_listed_command_loads_with_help() -> None:
    runner = CliRunner()
    for name in COMMAND_MODULES:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_no_command_module_defines_an_unlisted_command() -> None:
    for module_name in set(COMMAND_MODULES.values()):
        module = importlib.import_module(f"ebk.cli.{module_name}")
        for command in module.COMMANDS:
            assert COMMAND_MODULES.get(command.name) == module_name, command.name


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["frobnicate"])
    assert_refused(result, 2, mentions="No such command 'frobnicate'")
