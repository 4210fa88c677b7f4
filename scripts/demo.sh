#!/usr/bin/env bash
# The README's first command: install what is needed, then run ebk's main job on the
# embedded default (local repository, generated key file, throwaway PostgreSQL 15).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/demo.py"
