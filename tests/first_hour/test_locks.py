"""The hash-pinned locks cover pyproject.toml, and the offline advisory floor catches a
vulnerable pin (scripts/audit.py's fallback when pip-audit's service is unreachable)."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def load_audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ebk_audit", ROOT / "scripts" / "audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_locks_pin_every_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        "requirements.lock": project["dependencies"],
        "requirements-test.lock": project["dependencies"]
        + project["optional-dependencies"]["test"],
    }
    for lock, deps in wanted.items():
        text = (ROOT / lock).read_text()
        pinned = {
            canonicalize_name(n.split("[")[0]): v
            for n, v in re.findall(r"^([\w.\-\[\],]+)==(\S+)", text, re.M)
        }
        for dep in deps:
            req = Requirement(dep)
            name = canonicalize_name(req.name)
            assert name in pinned, f"{lock} lacks {name}: run scripts/lock.sh"
            assert req.specifier.contains(pinned[name], prereleases=True), (lock, dep)
        blocks = re.split(r"\n(?=\S)", text.split("\n", 2)[2])
        for block in blocks:
            if "==" in block.split("\n", 1)[0]:
                assert "--hash=sha256:" in block, block


def test_offline_floor_flags_a_vulnerable_pin(tmp_path: Path) -> None:
    audit = load_audit()
    lock = tmp_path / "old.lock"
    lock.write_text("cryptography==42.0.0 \\\n    --hash=sha256:00\nclick==8.1.7\n")
    problems = audit.offline_floor([lock])
    assert problems == ["old.lock: cryptography 42.0.0 needs cryptography>=44.0.1 (CVE-2024-12797)"]
    assert audit.offline_floor([ROOT / "requirements-test.lock"]) == []
