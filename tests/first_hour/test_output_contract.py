"""The output contract: stdout carries only a command's result, errors are one message +
hint + exit code on stderr, and a bad config never puts a log line or a traceback on stdout.

Every command is enumerated from the CLI's own command table (COMMAND_MODULES and the
groups' subcommands), so a new command is covered without editing this test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ebk.cli import COMMAND_MODULES, main

# Reads no config at all (it writes a new offline identity): covered separately below.
NO_CONFIG = {("keys", "recovery-keygen")}


def leaf_commands() -> list[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(main)
    found: list[tuple[tuple[str, ...], click.Command]] = []

    def walk(path: tuple[str, ...], command: click.Command) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                walk((*path, name), sub)
        else:
            found.append((path, command))

    for name in COMMAND_MODULES:
        command = main.get_command(ctx, name)
        assert command is not None, name
        walk((name,), command)
    return found


def required_args(command: click.Command, tmp: Path) -> list[str]:
    """Placeholders for required arguments and options, so parsing gets to the config."""
    args: list[str] = []
    for param in command.params:
        if isinstance(param, click.Argument) and param.required:
            args.append("latest")
        elif isinstance(param, click.Option) and param.required:
            args += [param.opts[0], str(tmp / f"value-{param.name}")]
    if command.name == "restore":
        args += ["--to", str(tmp / "target")]
    return args


COMMANDS = leaf_commands()
READS_CONFIG = [(path, command) for path, command in COMMANDS if path not in NO_CONFIG]


def test_every_command_is_enumerated() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"backup", "restore", "list", "keys check", "repo check", "daemon"} <= names
    assert len(names) >= 13


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text('[repository]\nurl = "file:///nonexistent"\n[nosuchsection]\nx = 1\n')
    return path


@pytest.mark.parametrize(
    ("path", "command"), READS_CONFIG, ids=[" ".join(p) for p, _ in READS_CONFIG]
)
def test_bad_config_keeps_stdout_clean(
    path: tuple[str, ...], command: click.Command, bad_config: Path, tmp_path: Path
) -> None:
    argv = ["--config", str(bad_config), *path, *required_args(command, tmp_path)]
    variants = [argv]
    if any(p.name == "json_output" for p in command.params):
        variants.append([*argv, "--json"])
    for args in variants:
        result = CliRunner().invoke(main, args)
        assert isinstance(result.exception, SystemExit), (args, result.exc_info)
        assert result.exit_code == 2, (args, result.output)
        if "--json" in args and result.stdout.strip():
            doc = json.loads(result.stdout)  # a JSON consumer never sees a log line
            assert doc["exit_code"] == 2 and doc["ok"] is False
        else:
            assert result.stdout == "", (args, result.stdout)
        err = result.stderr
        assert "Traceback" not in err
        assert err.count("ebk: error:") == 1, err
        assert "unknown section [nosuchsection]" in err
        assert "  hint: " in err and "  exit code 2: usage or config error" in err


def test_recovery_keygen_prints_only_its_result(tmp_path: Path) -> None:
    out = tmp_path / "identity"
    result = CliRunner().invoke(main, ["keys", "recovery-keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "recovery_recipients" in result.stdout and "event" not in result.stdout


def test_list_without_config_says_defaults_were_used(tmp_path: Path) -> None:
    if Path("/etc/ebk/ebk.toml").exists():
        pytest.skip("/etc/ebk/ebk.toml exists on this machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBK_")}
    env["EBK_REPOSITORY__URL"] = f"file://{tmp_path}/missing"
    proc = subprocess.run(
        [sys.executable, "-m", "ebk", "list"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout == ""
    assert "no config file was found" in proc.stderr and "built-in defaults" in proc.stderr
    assert "Traceback" not in proc.stderr
    quiet = subprocess.run(
        [sys.executable, "-m", "ebk", "--quiet", "list"], capture_output=True, text=True, env=env
    )
    assert quiet.returncode == 4 and quiet.stdout == ""
    assert "note: no config file was found" in quiet.stderr  # said in the error instead


def test_logs_are_json_on_stderr_when_not_a_terminal(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBK_")}
    env["EBK_REPOSITORY__URL"] = f"file://{tmp_path}/repo"
    env["EBK_KEYS__KEYFILE"] = str(tmp_path / "kek.json")
    run = [sys.executable, "-m", "ebk", "--verbose"]
    proc = subprocess.run([*run, "init"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    listing = subprocess.run([*run, "list", "--json"], capture_output=True, text=True, env=env)
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout) == []
    logs = [json.loads(line) for line in listing.stderr.splitlines() if line.strip()]
    assert logs and all("event" in entry and "level" in entry for entry in logs)


def test_verbose_and_quiet_together_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["--verbose", "--quiet", "list"])
    assert result.exit_code == 2 and result.stdout == ""
