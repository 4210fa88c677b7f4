#!/usr/bin/env bash
# The README's first command: install what the demo needs (scripts/setup.sh --demo: the
# PostgreSQL 15 packages and the venv, nothing else), then run ebk's main job on the embedded
# default (local repository, generated key file, a throwaway PostgreSQL 15 cluster on its own
# free port and temporary directory). A PostgreSQL already running on the host is left alone:
# not stopped, restarted or reconfigured. The tests' setup is scripts/setup.sh (no --demo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" --demo
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/demo.py"
