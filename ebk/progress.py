"""Progress on long work, only when a terminal is attached (never in logs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ebk.text import printable


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """A one-line byte counter on stderr, redrawn at most twice a second."""

    def __init__(
        self, label: str, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self._stream = stream or sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self._label = printable(label)  # it may quote a backup id from the repository
        self._start = time.monotonic()
        self._last = 0.0
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            rate = self.done / max(now - self._start, 1e-6)
            self._stream.write(
                f"\r{self._label}: {human_bytes(self.done)} ({human_bytes(rate)}/s)   "
            )
            self._stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._stream.write("\n")
            self._stream.flush()
