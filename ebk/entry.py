"""The `ebk` executable: the wal-push fast path first, else the full command line.

`ebk wal-push %p` and `ebk wal-fetch %f %p` run once per WAL segment; when the daemon listens, the
standard-library client in ebk.walclient hands it the segment without
importing the rest of ebk (docs/performance.md, "WAL archiving").
"""

from __future__ import annotations

import sys


def main() -> None:
    head = sys.argv[1:5]
    if "wal-push" in head or "wal-fetch" in head:
        from ebk.walclient import try_fast_fetch, try_fast_push

        fast = try_fast_push if "wal-push" in head else try_fast_fetch
        code = fast(sys.argv[1:])
        if code is not None:
            sys.exit(code)
    from ebk.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
