"""The repository is the one door to storage: no other module touches a Storage.

Walks the product's source (ebk/, daemon/, keys/, restore/) and fails on any
module outside ebk/repository/ and storage/ that calls a Storage method on
something named like a storage, reaches for a ``.storage``/``._storage``
attribute, or opens a storage itself (only ebk/runtime.py builds one and
hands it straight to Repository).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ["ebk", "daemon", "keys", "restore"]
ALLOWED = {ROOT / "ebk" / "repository"}
BUILDS_STORAGE = {ROOT / "ebk" / "runtime.py"}
STORAGE_METHODS = {
    "open_write", "open_read", "put_bytes", "put_if_absent", "get_bytes", "list", "delete",
    "exists", "list_incomplete", "remove_incomplete",
}  # fmt: skip


def _modules() -> list[Path]:
    files = []
    for top in PRODUCT:
        for path in sorted((ROOT / top).rglob("*.py")):
            if not any(path.is_relative_to(a) for a in ALLOWED):
                files.append(path)
    return files


def _names(node: ast.expr) -> str:
    """The dotted text of an expression like runtime.repository.storage (for matching)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_names(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _names(node.func) + "()"
    return ""


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("storage", "_storage")
            and not _names(node.value).endswith("config")  # config.storage: the settings
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in STORAGE_METHODS
            and "storage" in _names(node.func.value).lower()
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {_names(node.func)}()")
        if (
            isinstance(node, ast.Call)
            and _names(node.func).split(".")[-1] == "open_storage"
            and path not in BUILDS_STORAGE
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: open_storage()")
    return found


def test_only_the_repository_layer_touches_storage() -> None:
    modules = _modules()
    assert len(modules) > 50  # the walk found the product
    found = [v for path in modules for v in violations(path)]
    assert found == [], "storage used outside ebk/repository/:\n" + "\n".join(found)


def test_the_check_catches_a_bypass(tmp_path: Path) -> None:
    """The walker itself can fail: a module that writes through storage is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(runtime, repo, storage):\n"
        "    runtime.storage.put_bytes('x', b'')\n"
        "    repo._storage.delete('x')\n"
        "    storage.list('backups/')\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert len(violations(bad)) == 5  # two attribute reaches, three calls
    finally:
        ROOT = saved
