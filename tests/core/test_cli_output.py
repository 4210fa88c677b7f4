"""What an operator reads: the human tables of list/show, delete's confirmation,
progress on a terminal, and the replication error when the server cannot be reached."""

from __future__ import annotations

import io
import json
from pathlib import Path

from click.testing import CliRunner

from ebk.cli import main
from ebk.progress import Progress, human_bytes
from tests.support.ebkenv import make_env
from tests.support.postgres import PgCluster
from tests.support.refusal import assert_refused


def test_list_show_and_delete_for_people(pg_cluster: PgCluster, tmp_path: Path) -> None:
    env = make_env(tmp_path / "ebk", pg_cluster)
    assert "no complete backups" in env.run("list").stdout
    backup = json.loads(env.run("backup", "--type", "physical", "--json").stdout)
    backup_id = backup["backup_id"]

    listing = env.run("list").stdout.splitlines()
    assert listing[0].split()[:3] == ["ID", "KIND", "STARTED"]
    assert listing[1].startswith(f"{backup_id}  physical")

    shown = env.run("show", "latest").stdout
    assert f"backup_id          {backup_id}" in shown
    assert "base.tar.ebk" in shown and "backup_manifest.ebk" in shown
    assert backup["start_lsn"] in shown

    refused = CliRunner().invoke(
        main, ["--config", str(env.config_path), "delete", backup_id], input="n\n"
    )
    assert_refused(refused, 1, mentions="Aborted")  # aborted at the prompt: nothing deleted
    assert len(json.loads(env.run("list", "--json").stdout)) == 1
    confirmed = CliRunner().invoke(
        main, ["--config", str(env.config_path), "delete", backup_id], input="y\n"
    )
    assert confirmed.exit_code == 0, confirmed.output
    assert f"deleted backup {backup_id}" in confirmed.output
    assert json.loads(env.run("list", "--json").stdout) == []


def test_progress_draws_only_on_a_terminal() -> None:
    stream = io.StringIO()
    meter = Progress("backup x", stream=stream, enabled=True)
    meter.advance(3 * 1024 * 1024)
    meter.finish()
    assert "backup x: 3.0 MiB" in stream.getvalue()
    quiet = io.StringIO()
    off = Progress("backup y", stream=quiet, enabled=False)
    off.advance(10)
    off.finish()
    assert quiet.getvalue() == "" and off.done == 10
    assert human_bytes(512) == "512 B" and human_bytes(5 * 2**40) == "5.0 TiB"


def test_unreachable_server_is_a_postgres_error(tmp_path: Path) -> None:
    env = make_env(
        tmp_path / "ebk",
        None,
        extra='[postgres]\nhost = "127.0.0.1"\nport = 1\n[preflight]\npolicy = "off"\n',
    )
    result = env.run("backup", "--type", "physical", expect=7)
    assert "cannot connect to PostgreSQL at 127.0.0.1:1" in result.output
    assert "hint:" in result.output


def test_role_without_replication_gets_a_hint(pg_cluster: PgCluster, tmp_path: Path) -> None:
    pg_cluster.psql(
        "DO $$ BEGIN CREATE ROLE ebk_norepl LOGIN; EXCEPTION WHEN duplicate_object "
        "THEN NULL; END $$"
    )
    env = make_env(tmp_path / "ebk", pg_cluster, extra='[preflight]\npolicy = "off"\n')
    config = env.config_path.read_text().replace('user = "postgres"', 'user = "ebk_norepl"')
    env.config_path.write_text(config)
    result = env.run("backup", "--type", "physical", expect=7)
    assert "cannot open a replication connection" in result.output
    assert "REPLICATION attribute" in result.output
    assert json.loads(env.run("list", "--json").stdout) == []
