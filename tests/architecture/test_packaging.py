"""Every package folder is installed: a wheel without one breaks `ebk --help` in the image."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = tool["package-dir"]
    folders = {folder: name for name, folder in mapping.items()}
    found = set()
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        top = rel.parts[0]
        if top not in folders:
            continue  # tests/, bench/ ...: not installed
        found.add(".".join([folders[top], *rel.parts[1:]]))
    assert found, "no package found"
    assert sorted(found - set(tool["packages"])) == [], "add these to [tool.setuptools] packages"
