"""docs/setup.md works verbatim on a minimal Debian 12 as root: no sudo, every program it
runs is a listed prerequisite or always present, every shell block parses, and every
`ebk` command line names a real command and real options (checked against the CLI).

Running the guide end to end needs a host to give away (users, /etc/ebk, a systemd
unit, the Debian cluster), so this test checks it statically."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import click

from ebk.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "setup.md"

# Essential/required on every Debian 12 (coreutils, util-linux, passwd, hostname, apt, bash,
# grep, systemd on a host that runs services) plus what the guide's apt-get line installs.
ALWAYS = {
    "apt-get",
    "cat",
    "cd",
    "chmod",
    "chown",
    "cmp",
    "cp",
    "date",
    "echo",
    "grep",
    "hostname",
    "install",
    "ln",
    "printf",
    "rm",
    "runuser",
    "systemctl",
    "tee",
    "touch",
    "tr",
    "useradd",
    "usermod",
}
PREREQUISITES = {"python3", "openssl", "curl", "psql"}
FROM_THE_GUIDE = {"/opt/ebk/bin/pip", "ebk", "/usr/lib/postgresql/15/bin/pg_ctl"}
# Section 9 (ebk volume) installs cryptsetup-bin and e2fsprogs; systemd ships systemd-escape.
VOLUME_TOOLS = {"cryptsetup", "mkfs.ext4", "tune2fs", "mount", "systemd-escape"}
GLOBAL_WITH_VALUE = {"--config"}
GLOBAL_FLAGS = {"-v", "--verbose", "-q", "--quiet", "--version", "-h", "--help"}


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """Simple commands of a block: continuations joined, here-documents skipped."""
    lines, heredoc_end, joined = [], None, ""
    for line in block.splitlines():
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        joined += line.rstrip("\\") + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        found = re.search(r"<<'?(\w+)'?", joined)
        if found:
            heredoc_end = found.group(1)
        lines.append(joined)
        joined = ""
    result = []
    for line in lines:
        inner = re.findall(r"\$\(([^()]*)\)", line)  # $(...) runs commands too
        line = re.sub(r"\$\(([^()]*)\)", "SUBST", line)
        for text in [line, *inner]:
            result += split_simple(text)
    return result


def split_simple(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;(){}<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    result: list[list[str]] = []
    words: list[str] = []
    redirect = False
    for token in [*lexer, ";"]:
        if token and set(token) <= set("|&;(){}<>"):
            if "<" in token or ">" in token:
                redirect = True  # the next word is a file, not a command
                continue
            if words:
                result.append(words)
            words = []
            continue
        if redirect:
            redirect = False
            continue
        words.append(token)
    return result


def program_and_args(words: list[str]) -> list[str]:
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]  # environment assignments
    if words[:1] == ["runuser"]:
        words = words[words.index("--") + 1 :]
    return words


def test_no_sudo_and_every_block_parses() -> None:
    assert "sudo " not in DOC.read_text().replace("no `sudo`", "")
    for block in shell_blocks():
        proc = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert proc.returncode == 0, (block, proc.stderr)


def test_every_program_is_present_or_a_prerequisite() -> None:
    text = DOC.read_text()
    apt_line = next(line for line in text.splitlines() if line.startswith("apt-get install"))
    for package in ("python3-venv", "postgresql-client-15", "openssl", "curl"):
        assert package in apt_line.split(), package
    allowed = ALWAYS | PREREQUISITES | FROM_THE_GUIDE | VOLUME_TOOLS
    programs = set()
    for block in shell_blocks():
        for words in commands(block):
            words = program_and_args(words)
            if words and not words[0].startswith(("<", ">", "/dev/")):
                programs.add(words[0])
    unknown = {p for p in programs if p not in allowed and not p.startswith("/media")}
    assert not unknown, f"programs not listed as prerequisites: {sorted(unknown)}"
    assert {"ebk", "openssl", "curl", "psql"} <= programs


def check_ebk(args: list[str]) -> None:
    i = 0
    while i < len(args) and args[i].startswith("-"):
        option = args[i].split("=", 1)[0]
        assert option in GLOBAL_WITH_VALUE | GLOBAL_FLAGS, (args, option)
        i += 2 if option in GLOBAL_WITH_VALUE and "=" not in args[i] else 1
    if i == len(args):
        return  # `ebk --version`
    ctx = click.Context(main)
    command: click.Command | None = main.get_command(ctx, args[i])
    assert command is not None, f"ebk {args[i]}: no such command"
    i += 1
    while isinstance(command, click.Group):
        sub = command.get_command(ctx, args[i])
        assert sub is not None, f"no such subcommand {args[i]!r} in {args}"
        command, i = sub, i + 1
    known = {
        opt: param
        for param in command.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
    }
    known["--help"] = click.Option(["--help"], is_flag=True)
    rest = args[i:]
    j = 0
    while j < len(rest):
        token = rest[j]
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            assert name in known, f"ebk {command.name}: unknown option {name} in {args}"
            takes_value = not known[name].is_flag and "=" not in token
            j += 2 if takes_value else 1
        else:
            j += 1


def test_every_ebk_command_matches_the_cli() -> None:
    checked = 0
    for block in shell_blocks():
        for words in commands(block):
            words = program_and_args(words)
            if words[:1] == ["ebk"]:
                check_ebk(words[1:])
                checked += 1
    assert checked >= 13, checked
