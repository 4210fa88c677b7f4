"""An HTTP proxy on 127.0.0.1 that forwards to an emulator and injects faults.

Rules pick requests (method + path/query) and answer them with an HTTP error
(503, 500), drop the connection halfway through the request body ("drop"),
or forward the request and then cut the connection before the answer
("lose": the store did the work, the client never heard), the way a broken
network or an overloaded store does.  One request per connection
(`Connection: close` both ways) keeps the relaying simple and exact.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

Match = Callable[[str, str], bool]


@dataclass
class Rule:
    match: Match
    action: str | int  # "drop", "lose" or an HTTP status
    times: int | None  # None: forever
    skip: int = 0  # let this many matching requests through first
    hits: int = 0
    seen: int = 0


@dataclass
class FaultProxy:
    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # method, target, outcome
    headers: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(
        self, match: Match, action: str | int, times: int | None = None, skip: int = 0
    ) -> Rule:
        rule = Rule(match, action, times, skip)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def decide(self, method: str, target: str) -> str | int | None:
        with self._lock:
            for rule in self.rules:
                if not rule.match(method, target):
                    continue
                rule.seen += 1
                if rule.seen > rule.skip and (rule.times is None or rule.hits < rule.times):
                    rule.hits += 1
                    return rule.action
        return None

    def start(self) -> None:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy.relay(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- one request ---------------------------------------------------------

    @staticmethod
    def _read_head(conn: socket.socket) -> tuple[bytes, bytes] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    @staticmethod
    def _rewrite(head: bytes) -> tuple[bytes, dict[str, str]]:
        lines = head.split(b"\r\n")
        headers: dict[str, str] = {}
        kept = [lines[0]]
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
            if name.strip().lower() not in ("connection", "keep-alive", "expect"):
                kept.append(line)
        kept.append(b"Connection: close")
        return b"\r\n".join(kept) + b"\r\n\r\n", headers

    def relay(self, conn: socket.socket) -> None:
        got = self._read_head(conn)
        if got is None:
            return
        head, first = got
        body = bytearray(first)
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, target = request_line.split(" ")[:2]
        new_head, headers = self._rewrite(head)
        length = int(headers.get("content-length", "0") or 0)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.headers.append((method, target, headers))
        action = self.decide(method, target)
        if "100-continue" in headers.get("expect", "").lower() and not isinstance(action, int):
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if action == "drop":
            # Read about half the body, then cut the connection (RST).
            while len(body) < length // 2:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            linger_zero = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # close() sends RST
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
            conn.close()
            self.log.append((method, target, "dropped"))
            return
        if isinstance(action, int) and "100-continue" in headers.get("expect", "").lower():
            length = len(body)  # the client waits for our answer before sending the body
        if chunked:
            while not body.endswith(b"0\r\n\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
        else:
            while len(body) < length:
                chunk = conn.recv(min(1 << 20, length - len(body)))
                if not chunk:
                    return
                body += chunk
        if isinstance(action, int):
            text = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
            conn.sendall(
                f"HTTP/1.1 {action} Injected\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n".encode()
                + text
            )
            conn.close()
            self.log.append((method, target, str(action)))
            return
        with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=60) as up:
            up.sendall(new_head + body)
            received = bytearray()
            while True:
                chunk = up.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
            response = bytes(received)
        if action == "lose":
            linger_zero = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # close() sends RST
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
            conn.close()
            self.log.append((method, target, "lost"))
            return
        resp_head, sep, resp_body = response.partition(b"\r\n\r\n")
        if sep:
            resp_head, _ = self._rewrite(resp_head)
            response = resp_head + resp_body
        with contextlib.suppress(OSError):
            conn.sendall(response)
        conn.close()
        self.log.append((method, target, "forwarded"))
