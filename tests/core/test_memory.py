"""The allocator bound is applied on glibc (the CI machine's C library)."""

from __future__ import annotations

from ebk.memory import bound_allocator


def test_bound_allocator_applies_on_glibc() -> None:
    assert bound_allocator() is True
