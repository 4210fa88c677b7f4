#!/usr/bin/env bash
# The static gates CI runs (scripts/test.sh calls this first): ruff check, ruff format --check
# and mypy --strict over the whole ebk namespace. Exit non-zero when any fails.
#
# ruff format --check skips the files listed in scripts/format-pending.txt (not formatted yet;
# the lead formats them in one commit, then empties the list); every other file, new ones
# included, must be formatted.
# mypy cannot follow setuptools' package-dir mapping (keys/ -> ebk.keys, ...), so it checks
# a tree of symlinks laid out as the installed package is.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PATHS=(ebk daemon storage keys restore tests bench scripts)
rc=0
"$ROOT/.venv/bin/ruff" check "${PATHS[@]}" || rc=1

excludes=()
while read -r file; do
    [[ -z "$file" || "$file" == \#* ]] || excludes+=(--exclude "$file")
done < "$ROOT/scripts/format-pending.txt"
"$ROOT/.venv/bin/ruff" format --check --output-format concise --force-exclude "${excludes[@]}" "${PATHS[@]}" \
    || { echo "lint.sh: run: .venv/bin/ruff format <the files above>" >&2; rc=1; }

TREE="$ROOT/.cache/typecheck"
rm -rf "$TREE" && mkdir -p "$TREE/ebk"
for entry in ebk/*; do ln -s "$ROOT/$entry" "$TREE/ebk/"; done
for folder in daemon storage keys restore; do ln -s "$ROOT/$folder" "$TREE/ebk/$folder"; done
(cd "$TREE" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/pyproject.toml" -p ebk) || rc=1
((rc == 0)) && echo "lint.sh: ruff check, ruff format --check, mypy --strict: clean" >&2
exit "$rc"
