"""Overlap a producer with its consumer through a bounded queue.

The replication connection and pg_dump deliver bytes while ebk compresses and
encrypts; running the producer in its own thread lets both proceed at once.
The queue bound keeps memory fixed whatever the database size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(source: Iterable[T], depth: int = 8) -> Generator[T, None, None]:
    """Yield ``source``'s items, produced ahead by a worker thread (at most ``depth``)."""
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_END)
        except BaseException as exc:  # handed to the consumer, re-raised there
            items.put(_Failure(exc))

    worker = threading.Thread(target=produce, name="ebk-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join(timeout=5)
