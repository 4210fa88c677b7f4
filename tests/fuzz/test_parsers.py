"""Hostile documents (hypothesis): every repository parser answers with a value or an
ebk error, never a traceback, and never releases plaintext that did not authenticate."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)
MANIFEST_KEYS = [
    "format", "manifest_version", "stream_version", "backup_id", "kind", "ebk_version",
    "system_identifier", "server_version", "start_time", "stop_time", "dek_id", "key_slots",
    "objects", "databases", "auth", "timeline", "source_size", "parent", "format_version",
    "mac", "chain_root", "chain_depth",
]  # fmt: skip
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_manifest() -> dict[str, Any]:
    return {
        "format": "ebk-manifest", "manifest_version": 2, "stream_version": 1,
        "backup_id": "20261128T142301000001Z-3fa9c1", "kind": "logical", "ebk_version": "x",
        "system_identifier": "1", "server_version": "15.18", "start_time": "2026-11-28T14:23",
        "stop_time": "2026-11-28T14:24", "dek_id": "dek-1", "key_slots": ["keyfile/k"],
        "objects": [{"name": "dump-0001.ebk", "role": "dump", "plain_size": 1,
                     "stored_size": 2, "sha256": "ab" * 32, "database": "d"}],
        "databases": ["d"], "auth": {"mac": "00", "sig": "ed25519:wk-1:AAAA"},
    }  # fmt: skip


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    targets.all_targets(data)


@FUZZ
@given(JSON)
def test_arbitrary_json(value: object) -> None:
    targets.all_targets(json.dumps(value).encode())


@FUZZ
@given(st.dictionaries(st.sampled_from(MANIFEST_KEYS), JSON, max_size=len(MANIFEST_KEYS)))
def test_manifest_members_of_any_type(edits: dict[str, object]) -> None:
    doc = _valid_manifest()
    doc.update(edits)
    targets.manifest(json.dumps(doc).encode())


@FUZZ
@given(st.sampled_from(MANIFEST_KEYS), st.integers(min_value=0, max_value=4))
def test_manifest_members_removed_or_nested(key: str, depth: int) -> None:
    doc = _valid_manifest()
    value: object = doc.pop(key, None)
    for _ in range(depth):
        value = [value]
    if depth:
        doc[key] = value
    targets.manifest(json.dumps(doc).encode())


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    targets.all_targets(b"[" * 100_000 + b"]" * 100_000)
    targets.all_targets(b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
