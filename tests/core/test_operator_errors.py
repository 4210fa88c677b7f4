"""Operator mistakes get one clear line and the documented exit code, never a traceback.

Key file permissions and overwrites (3), config errors that name the key (2),
an unreachable PostgreSQL (7).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.ebkenv import EbkEnv, make_env
from tests.support.net import free_port
from tests.support.postgres import PgCluster
from tests.support.refusal import assert_refused


def assert_clean_error(output: str) -> None:
    assert "ebk: error:" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_is_refused(ebk_env: EbkEnv, mode: int) -> None:
    ebk_env.keyfile.chmod(mode)
    result = ebk_env.run("backup", "--type", "logical", "--database", "postgres", expect=3)
    assert_clean_error(result.stderr)
    assert f"chmod 600 {ebk_env.keyfile}" in result.stderr
    assert f"{mode:04o}" in result.stderr
    assert ebk_env.run("list", "--json").stdout.strip() == "[]"  # nothing was written


def test_key_file_refusal_also_guards_restore(ebk_env: EbkEnv, tmp_path: Path) -> None:
    bid = json.loads(
        ebk_env.run("backup", "--type", "logical", "--database", "postgres", "--json").stdout
    )["backup_id"]
    ebk_env.keyfile.chmod(0o644)
    result = ebk_env.run("restore", bid, "--to-db", "not_made", "--create", expect=3)
    assert "chmod 600" in result.stderr


def test_init_refuses_to_overwrite_a_key_file(ebk_env: EbkEnv) -> None:
    before = ebk_env.keyfile.read_bytes()
    assert ebk_env.keyfile.stat().st_mode & 0o777 == 0o600
    result = ebk_env.run("init", expect=3)
    assert_clean_error(result.stderr)
    assert "already exists" in result.stderr and "refusing to overwrite" in result.stderr
    assert ebk_env.keyfile.read_bytes() == before


def test_missing_key_file_says_how_to_create_one(ebk_env: EbkEnv) -> None:
    ebk_env.keyfile.unlink()
    result = ebk_env.run("backup", "--type", "physical", expect=3)
    assert "does not exist" in result.stderr and "ebk init" in result.stderr


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ("[backup]\ncompresion_level = 3\n", "backup.compresion_level"),
        ('[backup]\ncompression_level = "high"\n', "backup.compression_level"),
        ("[backup]\ncompression_level = 42\n", "backup.compression_level"),
        ("[nosuchsection]\nx = 1\n", "[nosuchsection]"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, pg_cluster: PgCluster, extra: str, names: str
) -> None:
    env = make_env(tmp_path / "ebk", pg_cluster, extra=extra, init=False)
    result = env.run("list", expect=2)
    assert_clean_error(result.stderr)
    assert names in result.stderr


def test_bad_repository_url_scheme(tmp_path: Path) -> None:
    config = tmp_path / "ebk.toml"
    config.write_text('[repository]\nurl = "ftp://example.org/backups"\n')
    env = EbkEnv(tmp_path, config, tmp_path / "repo", tmp_path / "kek.json")
    result = env.run("list", expect=2)
    assert_clean_error(result.stderr)
    assert "repository.url" in result.stderr and "'ftp'" in result.stderr


def test_env_override_with_wrong_type_names_the_variable(
    ebk_env: EbkEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EBK_POSTGRES__PORT", "abc")
    result = ebk_env.run("list", expect=2)
    assert_clean_error(result.stderr)
    assert "EBK_POSTGRES__PORT" in result.stderr and "'abc'" in result.stderr


def test_env_override_is_applied(ebk_env: EbkEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The positive side: a valid override really replaces the file's value."""
    monkeypatch.setenv("EBK_POSTGRES__PORT", str(free_port()))
    result = ebk_env.run("backup", "--type", "logical", "--database", "postgres", expect=7)
    assert "cannot connect to PostgreSQL" in result.stderr


def test_unreachable_postgres_exits_7(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = make_env(
        tmp_path / "ebk",
        None,
        extra=f'[postgres]\nhost = "127.0.0.1"\nport = {port}\nuser = "postgres"\n',
    )
    for kind in ("physical", "logical"):
        result = env.run("backup", "--type", kind, expect=7)
        assert_clean_error(result.stderr)
        assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}" in result.stderr
        assert "hint:" in result.stderr
    # subprocess: the real exit status a cron job or CronJob sees
    proc = env.subprocess("backup", "--type", "physical")
    assert_refused(proc, 7)
    assert_clean_error(proc.stderr)
    assert env.run("list", "--json").stdout.strip() == "[]"
