#!/usr/bin/env bash
# Regenerate the hash-pinned locks from pyproject.toml (needs the package index):
#   requirements.lock       runtime dependencies (the demo's venv, the Dockerfile)
#   requirements-test.lock  runtime + the [test] extra (scripts/setup.sh, CI)
#   requirements-checkov.lock  checkov alone, for its own venv .cache/checkov (scripts/checkov.in)
# Universal (every platform's wheels hashed), for Python 3.11. Commit both files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="$ROOT/.cache/lock-tools"
[[ -x "$TOOLS/bin/uv" ]] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q "uv==0.13.9"; }
common=(--universal --python-version 3.11 --generate-hashes -q)
"$TOOLS/bin/uv" pip compile pyproject.toml "${common[@]}" -o requirements.lock
"$TOOLS/bin/uv" pip compile pyproject.toml --extra test "${common[@]}" -o requirements-test.lock
# checkov: its own venv (scripts/checkov.in says why).
"$TOOLS/bin/uv" pip compile scripts/checkov.in "${common[@]}" -o requirements-checkov.lock
echo "lock.sh: wrote requirements.lock, requirements-test.lock and requirements-checkov.lock" >&2
