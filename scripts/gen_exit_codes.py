"""Write the exit-code table of ebk/errors.py into README.md and docs/operations.md.

The table sits between two markers in each file; run after changing EXIT_CODES
(tests/first_hour/test_exit_codes.py fails until the files match).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ebk.errors import exit_codes_markdown  # noqa: E402

BEGIN = "<!-- exit-codes: generated from ebk/errors.py by scripts/gen_exit_codes.py -->"
END = "<!-- /exit-codes -->"
FILES = [ROOT / "README.md", ROOT / "docs" / "operations.md"]
BLOCK = re.compile(re.escape(BEGIN) + r"\n.*?\n" + re.escape(END), re.DOTALL)


def block() -> str:
    return f"{BEGIN}\n{exit_codes_markdown()}\n{END}"


def main() -> None:
    for path in FILES:
        text = path.read_text()
        if not BLOCK.search(text):
            raise SystemExit(f"{path}: no {BEGIN} ... {END} block")
        path.write_text(BLOCK.sub(lambda _: block(), text))


if __name__ == "__main__":
    main()
