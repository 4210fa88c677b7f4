"""`ebk init --repository-only`, a `daemon --check` that writes nothing and reports
preflight warnings, and `ebk preflight` with PostgreSQL down saying why once."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ebk.cli import main
from tests.support.daemon_process import daemon_section, job
from tests.support.ebkenv import make_env
from tests.support.net import free_port
from tests.support.postgres import PgCluster


def test_second_repository_with_an_existing_key_file(tmp_path: Path) -> None:
    first = make_env(tmp_path / "first", None)  # runs `ebk init`: key file + repository
    second = make_env(tmp_path / "second", None, init=False)
    text = second.config_path.read_text().replace(str(second.keyfile), str(first.keyfile))
    second.config_path.write_text(text)

    refused = second.run("init", expect=3)
    assert "already exists" in refused.stderr and "ebk init --repository-only" in refused.stderr
    assert "Traceback" not in refused.stderr and not second.repo_dir.exists()

    made = second.run("init", "--repository-only")
    assert "key provider round trip works (keyfile)" in made.stdout
    assert f"repository created at file://{second.repo_dir}" in made.stdout
    assert json.loads(second.run("list", "--json").stdout) == []
    again = second.run("init", "--repository-only")
    assert "already initialised" in again.stdout


def test_repository_only_needs_a_working_key(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", None, init=False)
    result = env.run("init", "--repository-only", expect=3)
    assert "does not exist" in result.stderr and not env.repo_dir.exists()
    assert not env.keyfile.exists()  # never creates a key under --repository-only


def test_daemon_check_writes_nothing_and_reports_warnings(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    root = tmp_path / "ebk"
    section = daemon_section(root, free_port(), job("physical", "0 2 * * *"))
    env = make_env(root, pg_cluster, extra='[preflight]\npolicy = "warn"\n\n' + section)
    state = root / "state"
    assert not state.exists()

    checked = env.run("daemon", "--check")
    assert "warn preflight:" in checked.stdout and "policy 'warn'" in checked.stdout
    assert "ok  key provider round trip" in checked.stdout
    assert "would start, with 1 warning(s)" in checked.stdout
    assert not state.exists(), "daemon --check created the state directory"

    strict = env.run("daemon", "--check", "--strict", expect=6)
    assert "--strict refuses its warnings" in strict.stdout and not state.exists()
    usage = env.run("daemon", "--strict", expect=2)
    assert "--strict applies to --check only" in usage.stderr

    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = env.config_path.read_text().replace(f'state_dir = "{state}"', f'state_dir = "{blocker}"')
    env.config_path.write_text(bad)
    refused = env.run("daemon", "--check", expect=2)
    assert "state directory check failed" in refused.stderr and "not a directory" in refused.stderr


def test_preflight_with_postgres_down_says_why_once(tmp_path: Path) -> None:
    env = make_env(
        tmp_path / "ebk", None, extra='[postgres]\nhost = "127.0.0.1"\nport = 1\n', init=False
    )
    result = env.run("preflight", expect=6)
    out = result.stdout
    assert out.count("Connection refused") == 1, out
    assert "cannot connect to PostgreSQL at 127.0.0.1:1" in out
    assert "details: ebk --verbose preflight" in out
    assert "\t" not in out and max(len(line) for line in out.splitlines()) < 220, out
    assert "fix: set postgres.data_directory" in out

    detailed = CliRunner().invoke(
        main, ["--verbose", "--config", str(env.config_path), "preflight"]
    )
    assert detailed.exit_code == 6
    assert "Is the server running" in detailed.stdout
    assert detailed.stdout.count("Connection refused") == 1
