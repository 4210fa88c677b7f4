"""/healthz, /readyz and /metrics over plain HTTP (loopback by default).

No secrets and no control: the endpoints only report.  Served from a thread of
the daemon by the standard library's ThreadingHTTPServer.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from ebk.errors import ConfigError

# (healthy, reason) / (ready, reason) / metrics body
Probe = Callable[[], tuple[bool, str]]


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StatusServer:
    """Serves the probes until ``close()``."""

    def __init__(
        self, listen: str, *, health: Probe, ready: Probe, metrics: Callable[[], bytes]
    ) -> None:
        host, port = parse_listen(listen)

        class Handler(BaseHTTPRequestHandler):
            server_version = "ebk"
            sys_version = ""

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics(), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, reason = (health if path == "/healthz" else ready)()
                    body = (
                        ("ok\n" if ok else f"not ready: {reason}\n")
                        if path == "/readyz"
                        else ("ok\n" if ok else f"unhealthy: {reason}\n")
                    )
                    self._send(200 if ok else 503, body.encode(), "text/plain; charset=utf-8")
                else:
                    self._send(
                        404,
                        b"not found: try /healthz, /readyz or /metrics\n",
                        "text/plain; charset=utf-8",
                    )

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds would drown the job logs

        server_cls = type(
            "Server",
            (_Server,),
            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET},
        )
        try:
            self._server = server_cls((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"daemon.listen = {listen!r}: cannot listen there: {exc.strerror}",
                hint="pick a free port, or another address (loopback unless you mean to expose "
                "the metrics)",
            ) from None
        self.address = self._server.server_address
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="ebk-http",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self.address[0], self.address[1]
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
