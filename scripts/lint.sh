#!/usr/bin/env bash
# ruff and mypy --strict over the whole ebk namespace.
# mypy cannot follow setuptools' package-dir mapping (keys/ -> ebk.keys, ...), so it checks
# a tree of symlinks laid out as the installed package is.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TREE="$ROOT/.cache/typecheck"
rm -rf "$TREE" && mkdir -p "$TREE/ebk"
for entry in ebk/*; do ln -s "$ROOT/$entry" "$TREE/ebk/"; done
for folder in daemon storage keys restore; do ln -s "$ROOT/$folder" "$TREE/ebk/$folder"; done
"$ROOT/.venv/bin/ruff" check ebk daemon storage keys restore tests bench scripts
cd "$TREE" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/pyproject.toml" -p ebk
