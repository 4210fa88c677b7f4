"""Smoke test for scripts/setup.sh: the editable install maps the top-level folders into ebk."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAPPED = {
    "ebk.daemon": REPO / "daemon",
    "ebk.storage": REPO / "storage",
    "ebk.keys": REPO / "keys",
    "ebk.restore": REPO / "restore",
}


@pytest.mark.parametrize("name", sorted(MAPPED))
def test_mapped_package_imports_from_its_folder(name: str) -> None:
    mod = importlib.import_module(name)
    assert mod.__file__ is not None
    assert Path(mod.__file__).resolve().parent == MAPPED[name].resolve()


def test_imports_work_outside_the_repo(tmp_path: Path) -> None:
    code = (
        "import importlib.util, sys\n"
        "import ebk, ebk.keys, ebk.storage, ebk.daemon, ebk.restore\n"
        "leaked = [m for m in ('keys', 'storage', 'daemon', 'restore')"
        " if importlib.util.find_spec(m)]\n"
        "sys.exit(f'top-level modules leaked: {leaked}' if leaked else 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)


def test_ebk_console_script_installed() -> None:
    assert (Path(sys.prefix) / "bin" / "ebk").is_file()
