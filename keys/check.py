"""Prove that the key providers work before anything is written."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from ebk.errors import WrongKey
from ebk.keys.base import KeyProvider

CHECK_CONTEXT = {"backup_id": "ebk-keys-check", "cluster": "none", "dek_id": "check"}


def check_providers(providers: Sequence[KeyProvider]) -> list[dict[str, str]]:
    """Wrap and unwrap a random key through every provider; O(1) calls each."""
    results = []
    for provider in providers:
        probe = secrets.token_bytes(32)
        wrapped = provider.wrap(probe, CHECK_CONTEXT)
        if provider.unwrap(wrapped, CHECK_CONTEXT) != probe:
            raise WrongKey(f"key provider {provider.name} returned a different key on unwrap")
        results.append(provider.describe())
    return results
