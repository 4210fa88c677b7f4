"""Streaming transfers with bounded memory, shared by the S3, GCS and Azure backends.

:class:`PartPipeline` turns a stream of writes into fixed-size parts that are
uploaded by a small thread pool, so memory stays near
``part_size * (parts_in_flight + 1)`` however large the object is;
:class:`PipelinedWriter` is the ObjectWriter skeleton on top of it.
:class:`RangeReader` reads an object in ranged chunks with read-ahead, so a
dropped connection costs one chunk, not the restore.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from ebk.errors import StorageError

R = TypeVar("R")


class PartPipeline(Generic[R]):
    """Cuts written bytes into parts and uploads them on a bounded pool.

    ``upload(number, data)`` is called for parts 1, 2, ... (with ``workers``
    threads; ``workers=1`` keeps them in order, for resumable uploads).  The
    producer blocks while ``in_flight`` parts are queued or uploading, so at
    most ``in_flight + 1`` parts exist at once.  ``part_size(number)`` may grow
    with the part number (S3 allows 10,000 parts).  The first upload error is
    re-raised to the producer on its next write or at ``finish()``.
    """

    def __init__(
        self,
        upload: Callable[[int, bytearray], R],
        *,
        part_size: Callable[[int], int],
        in_flight: int,
        workers: int,
        name: str,
    ) -> None:
        self._upload = upload
        self._part_size = part_size
        self._slots = threading.BoundedSemaphore(in_flight)
        self._pool = ThreadPoolExecutor(
            max_workers=min(workers, in_flight), thread_name_prefix=f"ebk-upload-{name}"
        )
        self._futures: list[Future[R]] = []
        self._number = 0
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self.buffered = 0  # bytes held by parts not yet uploaded, plus the open buffer
        self.peak_buffered = 0
        self.parts_sent = 0

    @property
    def submitted(self) -> int:
        """How many parts were handed to the pool so far."""
        return self._number

    @property
    def pending(self) -> bytearray:
        """The bytes written since the last full part (the last part, at finish)."""
        return self._buffer

    def _account(self, delta: int) -> None:
        with self._lock:
            self.buffered += delta
            self.peak_buffered = max(self.peak_buffered, self.buffered)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check()
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            want = self._part_size(self._number + 1) - len(self._buffer)
            piece = view[:want]
            self._buffer += piece
            self._account(len(piece))
            view = view[len(piece) :]
            if len(self._buffer) >= self._part_size(self._number + 1):
                self.submit(self._buffer)
                self._buffer = bytearray()
        return total

    def submit(self, part: bytearray) -> Future[R]:
        """Queue one part (blocks while ``in_flight`` parts are pending)."""
        self._slots.acquire()
        self._number += 1
        if self._error is not None:
            self._slots.release()
            raise self._error
        number = self._number
        size = len(part)

        def run() -> R:
            try:
                if self._error is not None:
                    raise self._error
                return self._upload(number, part)
            except BaseException as exc:
                if self._error is None:
                    self._error = exc
                raise
            finally:
                self.parts_sent += 1
                self._account(-size)
                self._slots.release()

        future = self._pool.submit(run)
        self._futures.append(future)
        return future

    def drain(self) -> list[R]:
        """Wait for every submitted part; results in part order."""
        results = [f.result() for f in self._futures] if self._error is None else []
        self._check()
        return results

    def take_pending(self) -> bytearray:
        part, self._buffer = self._buffer, bytearray()
        return part

    def finish(self, *, send_last: bool = True) -> list[R]:
        """Send the last part (if ``send_last`` and non-empty) and wait for all."""
        self._check()
        if send_last and (self._buffer or self._number == 0):
            self.submit(self.take_pending())
        return self.drain()

    def cancel(self) -> None:
        """Stop: queued parts are skipped, running ones finish; the pool is released."""
        if self._error is None:
            self._error = StorageError("upload cancelled")
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._account(-len(self._buffer))
        self._buffer = bytearray()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class PipelinedWriter(Generic[R]):
    """write/commit/abort shared by the object-store writers.

    Bytes go through a PartPipeline; an object smaller than one part is sent
    whole (``put_whole``), a larger one is finished by ``complete``.  Any
    failure in write or commit aborts the upload before it propagates, so an
    error never leaves a half-written object behind.
    """

    pipeline: PartPipeline[R]
    _finished: bool

    def put_whole(self, data: bytes) -> None:
        raise NotImplementedError

    def complete(self) -> None:
        """Finish a multi-part upload: wait for the parts and make the object visible."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def after_commit(self) -> None:
        """Release what the upload held (connections); the object is durable by now."""
        self.pipeline.close()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._finished:
            raise StorageError("write to a finished object")
        try:
            return self.pipeline.write(data)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        if self._finished:
            raise StorageError("commit of a finished object")
        try:
            if self.pipeline.submitted == 0:
                self.put_whole(bytes(self.pipeline.take_pending()))
            else:
                self.complete()
        except BaseException:
            self.abort()
            raise
        self._finished = True
        self.after_commit()


class RangeReader:
    """A read-only stream over ``fetch(start, end_inclusive) -> bytes`` ranges.

    Chunks are fetched ahead on a small pool (each fetch retried by the
    caller's Retrier), so memory is about ``chunk * (ahead + 1)``.
    """

    def __init__(
        self,
        fetch: Callable[[int, int], bytes],
        size: int,
        *,
        chunk: int,
        ahead: int,
        name: str,
    ) -> None:
        self._fetch = fetch
        self.size = size
        self._chunk = chunk
        self._ahead = max(1, ahead)
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=self._ahead, thread_name_prefix=f"ebk-read-{name}"
        )
        self._queue: list[Future[bytes]] = []
        self._next = 0  # offset of the next chunk to schedule
        self._current = memoryview(b"")
        self.position = 0
        self.closed = False

    def _schedule(self) -> None:
        assert self._pool is not None
        while len(self._queue) < self._ahead and self._next < self.size:
            start = self._next
            end = min(self.size, start + self._chunk) - 1
            self._queue.append(self._pool.submit(self._fetch_checked, start, end))
            self._next = end + 1

    def _fetch_checked(self, start: int, end: int) -> bytes:
        data = self._fetch(start, end)
        if len(data) != end - start + 1:
            raise StorageError(
                f"the object store returned {len(data)} bytes for range {start}-{end}; "
                "the object changed or was truncated while it was read"
            )
        return data

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed object stream")
        if size is None or size < 0:
            parts = []
            while chunk := self.read(self._chunk):
                parts.append(chunk)
            return b"".join(parts)
        out = bytearray()
        while len(out) < size:
            if not self._current:
                self._schedule()
                if not self._queue:
                    break
                self._current = memoryview(self._queue.pop(0).result())
                self._schedule()
            take = self._current[: size - len(out)]
            out += take
            self._current = self._current[len(take) :]
        self.position += len(out)
        return bytes(out)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for future in self._queue:
                future.cancel()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._queue.clear()
            self._current = memoryview(b"")

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
