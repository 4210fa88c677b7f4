"""A tiny JSON-over-HTTP client for metadata servers and cloud/Kubernetes REST APIs.

The cloud SDKs for compute (google-cloud-compute, azure-mgmt-compute, the
kubernetes client) are large dependencies for four GET requests each; urllib
with a timeout does the job and keeps the endpoints injectable for tests.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """A metadata/API request failed; the message is safe to show (no tokens)."""


def request_json(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    method: str = "GET",
    context: ssl.SSLContext | None = None,
    raw: bool = False,
) -> Any:
    """GET (or PUT) ``url`` and decode JSON; every failure becomes ApiError."""
    req = urllib.request.Request(url, headers=dict(headers or {}), method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
            body = resp.read(8 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        raise ApiError(f"{method} {_safe(url)} returned HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(f"{method} {_safe(url)} failed: {reason}") from None
    if raw:
        return body.decode("utf-8", "replace")
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(f"{method} {_safe(url)} did not return JSON") from None


def _safe(url: str) -> str:
    """Drop the query string: it can carry resource names but never needs to be shown."""
    return url.split("?", 1)[0]


def dig(data: Any, *keys: str | int) -> Any:
    """data[k1][k2]... or None when any step is missing."""
    for key in keys:
        if isinstance(data, dict) and isinstance(key, str):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data
