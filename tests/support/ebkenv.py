"""An ebk config (local repository, generated key file) around a test cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner, Result

from ebk.cli import main
from tests.support.postgres import PgCluster
from tests.support.refusal import assert_refused


@dataclass
class EbkEnv:
    root: Path
    config_path: Path
    repo_dir: Path
    keyfile: Path

    def run(self, *args: str, expect: int | None = 0) -> Result:
        """Run the CLI in-process (fast, counted by coverage).

        ``expect``: the exit code; a non-zero one is checked as a refusal
        (tests.support.refusal.assert_refused: no traceback either); None checks nothing.
        """
        result = CliRunner().invoke(
            main, ["--config", str(self.config_path), *args], catch_exceptions=False
        )
        if expect:  # a refusal: the exact code and no traceback
            assert_refused(result, expect)
        elif expect is not None:
            assert result.exit_code == expect, (
                f"ebk {' '.join(args)} exited {result.exit_code}, expected {expect}:\n"
                f"{result.output}"
            )
        return result

    def subprocess(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run ebk as a real process (signals, exit codes)."""
        env = dict(os.environ, EBK_CONFIG=str(self.config_path))
        return subprocess.run(
            [sys.executable, "-m", "ebk", *args], capture_output=True, text=True, env=env, **kwargs
        )  # type: ignore[call-overload]


def make_env(
    root: Path, cluster: PgCluster | None, *, extra: str = "", init: bool = True
) -> EbkEnv:
    root.mkdir(parents=True, exist_ok=True)
    repo = root / "repo"
    keyfile = root / "kek.json"
    config = root / "ebk.toml"
    text = (
        f'[repository]\nurl = "file://{repo}"\n\n[keys]\nprovider = "keyfile"\n'
        f'keyfile = "{keyfile}"\n\n[log]\nformat = "json"\n\n'
    )
    if cluster is not None:
        text += cluster.config_section()
    config.write_text(text + extra)
    env = EbkEnv(root, config, repo, keyfile)
    if init:
        env.run("init")
    return env


def kms_env(root: Path, cluster: PgCluster | None, keys_toml: str) -> EbkEnv:
    """An ebk config like make_env, with a [keys] section of the test's."""
    root.mkdir(parents=True, exist_ok=True)
    repo = root / "repo"
    config = root / "ebk.toml"
    text = f'[repository]\nurl = "file://{repo}"\n\n{keys_toml}\n\n[log]\nformat = "json"\n\n'
    if cluster is not None:
        text += cluster.config_section()
    config.write_text(text)
    env = EbkEnv(root, config, repo, root / "kek.json")
    env.run("init")
    return env


def stored_files(env: EbkEnv) -> set[str]:
    """Every object in the local repository (what a failed backup must not add to)."""
    if not env.repo_dir.exists():
        return set()
    return {str(p.relative_to(env.repo_dir)) for p in env.repo_dir.rglob("*") if p.is_file()}
