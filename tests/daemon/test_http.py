"""The status server: probes, metrics from a private registry, listen errors."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from ebk.daemon.http import StatusServer
from ebk.daemon.metrics import DaemonMetrics
from ebk.errors import ConfigError
from tests.support.net import free_port


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_probes_and_metrics() -> None:
    state = {"ready": (False, "starting")}
    metrics = DaemonMetrics(lambda: [("nightly", "physical", 1.7e9)])
    metrics.declare("nightly", "physical")
    metrics.observe(
        "nightly", "physical", outcome="success", finished=1.6e9, duration=3.5, nbytes=1234
    )
    server = StatusServer(
        f"127.0.0.1:{free_port()}",
        health=lambda: (True, ""),
        ready=lambda: state["ready"],
        metrics=metrics.render,
    )
    server.start()
    try:
        assert _get(server.url + "/healthz")[::2] == (200, "ok\n")
        assert _get(server.url + "/readyz")[::2] == (503, "not ready: starting\n")
        state["ready"] = (True, "")
        assert _get(server.url + "/readyz")[::2] == (200, "ok\n")
        code, ctype, body = _get(server.url + "/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=")
        assert 'ebk_job_last_bytes{job="nightly",kind="physical"} 1234.0' in body
        assert 'ebk_job_next_run_timestamp_seconds{job="nightly",kind="physical"} 1.7e+09' in body
        assert 'ebk_job_runs_total{job="nightly",kind="physical",outcome="failure"} 0.0' in body
        assert _get(server.url + "/")[0] == 404
        # A second daemon's metrics do not leak into this one (no global registry).
        other = DaemonMetrics(lambda: [])
        assert b"nightly" not in other.render()
        metrics.forget("nightly", "physical")
        left = [
            line
            for line in _get(server.url + "/metrics")[2].splitlines()
            if 'job="nightly"' in line
        ]
        # Only next-run remains: it comes from the scheduler (here a stub), not from a series.
        assert left and all(line.startswith("ebk_job_next_run_timestamp_seconds") for line in left)
    finally:
        server.close()


def test_ipv6_loopback_and_a_busy_port() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server = StatusServer(
        f"[::1]:{free_port()}",
        health=lambda: (True, ""),
        ready=lambda: (True, ""),
        metrics=lambda: b"",
    )
    server.start()
    try:
        assert server.url.startswith("http://[::1]:")
        assert _get(server.url + "/healthz")[0] == 200
        with pytest.raises(ConfigError, match="cannot listen there"):
            StatusServer(
                f"[::1]:{server.address[1]}",
                health=lambda: (True, ""),
                ready=lambda: (True, ""),
                metrics=lambda: b"",
            )
    finally:
        server.close()
