"""The Compose harness (tests/support/compose_api.py) translates docker-compose.prod.yml
faithfully: checked here without an engine, so a wrong translation fails in the fast
tier and not only where Docker runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.manifests import COMPOSE_FILE
from tests.support.compose_api import ComposeProject, seconds

ENV = {
    "PGDATA_HOST_DIR": "/srv/enc/pgdata",
    "EBK_HOST_DIR": "/srv/ebk",
    "EBK_SECRETS_DIR": "/etc/ebk/secrets",
    "EBK_POSTGRES_IMAGE": "ebk-postgres:15",
}


def project(file: Path = COMPOSE_FILE) -> ComposeProject:
    return ComposeProject(engine=None, file=file, environ=ENV, port_map={5432: 40001})  # type: ignore[arg-type]


def flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def test_postgres_is_created_with_the_files_settings() -> None:
    args = project().create_args("postgres")
    assert args[args.index("--name") + 1] == "ebk-prod-postgres-1"
    assert "-v" not in args and "--volume" not in args  # -v would create a missing source
    mounts = flag_values(args, "--mount")
    assert "type=bind,source=/srv/enc/pgdata/data,target=/var/lib/postgresql/data" in mounts
    assert (
        "type=bind,source=/etc/ebk/secrets/postgres_password,"
        "target=/run/secrets/postgres_password,readonly"
    ) in mounts
    assert "type=tmpfs,target=/var/run/postgresql,tmpfs-size=1048576" in mounts
    assert flag_values(args, "--user") == ["999:999"] and "--read-only" in args
    assert flag_values(args, "--cap-drop") == ["ALL"]
    assert flag_values(args, "--security-opt") == ["no-new-privileges:true"]
    assert flag_values(args, "--stop-signal") == ["SIGINT"]
    assert flag_values(args, "--stop-timeout") == ["120"]
    assert flag_values(args, "--publish") == ["127.0.0.1:40001:5432", "127.0.0.1:9187:9187"]
    assert flag_values(args, "--network") == ["ebk-prod-db"]
    assert flag_values(args, "--health-cmd") == [
        "pg_isready -h /var/run/postgresql -U postgres -d postgres"
    ]
    assert flag_values(args, "--cpus") == ["2"] and flag_values(args, "--pids-limit") == ["512"]
    assert args[-1] == "ebk-postgres:15"  # EBK_POSTGRES_IMAGE


def test_ebk_shares_the_postgres_network_namespace_and_sees_pgdata_read_only() -> None:
    args = project().create_args("ebk")
    assert flag_values(args, "--network") == ["container:ebk-prod-postgres-1"]
    assert "--publish" not in args
    mounts = flag_values(args, "--mount")
    assert (
        "type=bind,source=/srv/enc/pgdata/data,target=/var/lib/postgresql/data,readonly" in mounts
    )
    assert any(m.endswith("target=/etc/ebk/ebk.toml,readonly") for m in mounts)
    assert args[-2:] == ["ebk:latest", "daemon"]


def test_an_untranslated_setting_is_an_error(tmp_path: Path) -> None:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    doc["services"]["postgres"]["privileged"] = True
    file = tmp_path / "docker-compose.yml"
    file.write_text(yaml.safe_dump(doc))
    with pytest.raises(AssertionError, match="privileged"):
        project(file).create_args("postgres")


def test_compose_durations() -> None:
    assert [seconds(d) for d in ("2m", "30s", "1m30s", "500ms", "1h")] == [120, 30, 90, 1, 3600]
