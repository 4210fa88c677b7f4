"""Prove that the key providers work before anything is written."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

from ebk.errors import KeyProviderError, WrongKey
from ebk.keys.base import KeyProvider

CHECK_CONTEXT = {"backup_id": "ebk-keys-check", "cluster": "none", "dek_id": "check"}
OTHER_CONTEXT = {"backup_id": "ebk-keys-check-other", "cluster": "none", "dek_id": "check"}


def check_providers(providers: Sequence[KeyProvider]) -> list[dict[str, str]]:
    """Wrap, unwrap, and unwrap under another context through every provider; O(1) calls each.

    The third call proves the binding: a provider that unwraps under a foreign
    context (e.g. a Vault Transit key without derived=true, which ignores the
    context) would let a key object be moved between backups.  Wrap-only
    providers (recovery recipients) are proven by wrapping.
    """
    results = []
    for provider in providers:
        started = time.monotonic()
        probe = secrets.token_bytes(32)
        wrapped = provider.wrap(probe, CHECK_CONTEXT)
        result = dict(provider.describe())
        if getattr(provider, "wrap_only", False):
            result["check"] = "wrap ok (wrap-only: the private key is offline)"
        else:
            if provider.unwrap(wrapped, CHECK_CONTEXT) != probe:
                raise WrongKey(f"key provider {provider.name} returned a different key on unwrap")
            try:
                provider.unwrap(wrapped, OTHER_CONTEXT)
            except WrongKey:
                pass
            else:
                raise KeyProviderError(
                    f"key provider {provider.name} unwrapped a data key under another backup's "
                    "context: wrapped keys are not bound to their backup; refusing to use it",
                    hint="for Vault Transit, create the key with derived=true "
                    "(see docs/key-management.md)",
                )
            result["check"] = "round trip ok, context bound"
        result["kek_id"] = wrapped.kek_id
        result["ms"] = f"{(time.monotonic() - started) * 1000:.0f}"
        results.append(result)
    return results
