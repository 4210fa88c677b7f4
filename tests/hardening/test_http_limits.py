"""Finding 10 (issue 10): the status server's threads and connections stay bounded.

Attacker-style clients on the daemon's port: hundreds of idle connections
with half-sent requests (slowloris), oversized headers, garbage.  The thread
count stays 1 + WORKERS, /healthz keeps answering, idle connections are
closed after the request timeout.  (Run in-process so threads can be counted.)
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from ebk.daemon import http
from ebk.daemon.http import StatusServer
from tests.support.net import free_port

IDLE = 500


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatusServer]:
    monkeypatch.setattr(http, "REQUEST_TIMEOUT", 1.5)  # 5 s in production; keeps the test short
    srv = StatusServer(
        f"127.0.0.1:{free_port()}",
        health=lambda: (True, ""),
        ready=lambda: (True, ""),
        metrics=lambda: b"# metrics\n",
    )
    srv.start()
    yield srv
    srv.close()


def _healthz(url: str) -> tuple[int, float]:
    started = time.monotonic()
    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        return r.status, time.monotonic() - started


def _raw(server: StatusServer, data: bytes) -> bytes:
    with socket.create_connection(server.address[:2], timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_half_sent_requests_do_not_hold_threads_or_block_probes(server: StatusServer) -> None:
    before = threading.active_count()
    idle = []
    try:
        for _ in range(IDLE):
            s = socket.create_connection(server.address[:2], timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            idle.append(s)
        for _ in range(5):
            status, seconds = _healthz(server.url)
            assert status == 200 and seconds < 2.0
        # 1 accept thread + at most WORKERS answering threads, whatever the clients do.
        assert threading.active_count() <= before + http.WORKERS
        # Idle connections are closed by the server after the request timeout.
        time.sleep(http.REQUEST_TIMEOUT + 1.0)
        closed = 0
        for s in idle:
            s.settimeout(0.01)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed == IDLE
    finally:
        for s in idle:
            s.close()
    assert _healthz(server.url)[0] == 200


def test_oversized_header_and_garbage_get_errors_not_threads(server: StatusServer) -> None:
    big = _raw(server, b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 431 ")
    assert _raw(server, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _raw(server, b"POST /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    ok = _raw(server, b"GET /readyz HTTP/1.0\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"\r\n\r\nok\n")


def test_a_failing_probe_is_a_500_and_the_server_lives_on() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    srv = StatusServer(
        f"127.0.0.1:{free_port()}", health=broken, ready=lambda: (True, ""), metrics=lambda: b""
    )
    srv.start()
    try:
        assert _raw(srv, b"GET /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 500 ")
        assert _raw(srv, b"GET /readyz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    finally:
        srv.close()
