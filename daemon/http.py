"""/healthz, /readyz and /metrics over plain HTTP (loopback by default).

No secrets and no control: the endpoints only report.  The probes must keep
answering when something misbehaves on the port (a scanner, a stuck client,
slowloris-style half-sent requests), so the server bounds everything:

- one selector thread accepts connections and reads requests without
  blocking; a request is handed on only once its header is complete;
- a connection that has not sent a complete header within
  ``REQUEST_TIMEOUT`` seconds is closed, and one that sends more than
  ``MAX_HEADER`` bytes gets 431;
- at most ``MAX_CONNECTIONS`` connections are open; a new one beyond that
  evicts the longest-waiting incomplete one (a live client's request is
  complete within milliseconds, an idle one waits);
- ``WORKERS`` threads answer complete requests, with a write timeout.

So the thread count is 1 + WORKERS whatever the clients do.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST

from ebk.errors import ConfigError

# (healthy, reason) / (ready, reason) / metrics body
Probe = Callable[[], tuple[bool, str]]

REQUEST_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
MAX_HEADER = 8192
MAX_CONNECTIONS = 64
WORKERS = 4
_TEXT = "text/plain; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class _Pending:
    sock: socket.socket
    deadline: float
    data: bytearray = field(default_factory=bytearray)


class StatusServer:
    """Serves the probes until ``close()``."""

    def __init__(
        self, listen: str, *, health: Probe, ready: Probe, metrics: Callable[[], bytes]
    ) -> None:
        host, port = parse_listen(listen)
        self._health, self._ready, self._metrics = health, ready, metrics
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(128)
        except OSError as exc:
            self._listener.close()
            raise ConfigError(
                f"daemon.listen = {listen!r}: cannot listen there: {exc.strerror}",
                hint="pick a free port, or another address (loopback unless you mean to expose "
                "the metrics)",
            ) from None
        self._listener.setblocking(False)
        self.address = self._listener.getsockname()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._pending: dict[socket.socket, _Pending] = {}
        self._active = 0  # connections handed to workers, not yet closed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ebk-http")
        self._thread = threading.Thread(target=self._serve, name="ebk-http-accept", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.address[0], self.address[1]
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._workers.shutdown(wait=True, cancel_futures=True)
        for pending in list(self._pending.values()):
            pending.sock.close()
        self._pending.clear()
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the selector thread ------------------------------------------------

    def _serve(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = max(0.0, min([1.0, *(p.deadline - now for p in self._pending.values())]))
            for key, _ in self._selector.select(timeout=timeout):
                sock = key.fileobj
                if sock is self._listener:
                    self._accept()
                elif sock is self._wake_r:
                    self._wake_r.recv(64)
                else:
                    assert isinstance(sock, socket.socket)
                    try:
                        self._read(sock)
                    except Exception:  # one odd connection must never stop the probes
                        self._drop(sock)
            now = time.monotonic()
            for pending in [p for p in self._pending.values() if p.deadline <= now]:
                self._drop(pending.sock)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: try again on the next event
            with self._lock:
                busy = len(self._pending) + self._active
            if busy >= MAX_CONNECTIONS:
                if not self._pending:
                    sock.close()  # every slot is answering a complete request
                    continue
                oldest = min(self._pending.values(), key=lambda p: p.deadline)
                self._drop(oldest.sock)
            sock.setblocking(False)
            self._pending[sock] = _Pending(sock, time.monotonic() + REQUEST_TIMEOUT)
            self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> None:
        pending = self._pending.get(sock)
        if pending is None:
            return  # evicted earlier in this round of events
        try:
            chunk = sock.recv(MAX_HEADER + 1 - len(pending.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(sock)
            return
        pending.data += chunk
        end = pending.data.find(b"\r\n\r\n")
        if end < 0 and len(pending.data) <= MAX_HEADER:
            return
        self._selector.unregister(sock)
        del self._pending[sock]
        with self._lock:
            self._active += 1
        head = bytes(pending.data[:end]) if end >= 0 else None
        self._workers.submit(self._answer, sock, head)

    def _drop(self, sock: socket.socket) -> None:
        self._pending.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()

    # -- worker threads -------------------------------------------------------

    def _answer(self, sock: socket.socket, head: bytes | None) -> None:
        try:
            try:
                code, body, ctype = self._route(head)
            except Exception as exc:  # a failing probe must not kill the worker silently
                code, body, ctype = 500, f"probe failed: {type(exc).__name__}\n".encode(), _TEXT
            allow = "Allow: GET\r\n" if code == 405 else ""
            header = (
                f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nServer: ebk\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Cache-Control: no-store\r\n{allow}Connection: close\r\n\r\n"
            )
            sock.settimeout(WRITE_TIMEOUT)
            sock.sendall(header.encode("ascii") + body)
            if head is None:
                _linger(sock)
        except OSError:
            pass  # the client went away or stopped reading: nothing to report to it
        finally:
            sock.close()
            with self._lock:
                self._active -= 1

    def _route(self, head: bytes | None) -> tuple[int, bytes, str]:
        if head is None:
            return 431, b"request header too large\n", _TEXT
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, b"bad request\n", _TEXT
        if parts[0] != b"GET":
            return 405, b"only GET is served\n", _TEXT
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            return 200, self._metrics(), CONTENT_TYPE_LATEST
        if path in (b"/healthz", b"/readyz"):
            ok, reason = (self._health if path == b"/healthz" else self._ready)()
            word = "not ready" if path == b"/readyz" else "unhealthy"
            body = "ok\n" if ok else f"{word}: {reason}\n"
            return (200 if ok else 503), body.encode(), _TEXT
        return 404, b"not found: try /healthz, /readyz or /metrics\n", _TEXT


def _linger(sock: socket.socket) -> None:
    """Read away (briefly, boundedly) what a client sent beyond the header limit.

    Closing a socket with unread input makes the kernel send a reset, which
    can destroy the 431 response before the client reads it.
    """
    sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 1.0
    received = 0
    with contextlib.suppress(OSError):
        while received < 1024 * 1024 and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += len(chunk)
