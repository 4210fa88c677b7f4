"""Read a small document from the repository with a hard size cap, before any parsing.

Everything in the bucket is attacker-controlled until it authenticates, and a
3 GiB "manifest" must not cost 3 GB of memory: the size the listing reports
is checked first (cheap, no download), then at most ``cap + 1`` bytes are
read, because the listed size is itself only the store's word and the object
can change between listing and reading.
"""

from __future__ import annotations

from typing import Protocol

from ebk.errors import IntegrityError

READ_PIECE = 64 * 1024


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _too_large(what: str, size: str, cap: int) -> IntegrityError:
    return IntegrityError(
        f"{what} is {size} bytes, more than the {cap} bytes ebk ever writes for it; "
        "refusing to read it",
        hint="it was not written by ebk (or was replaced in the repository); "
        "check who can write to the repository",
    )


def check_listed_size(size: int, cap: int, what: str) -> None:
    """Refuse a document whose listed size is already over the cap (no download)."""
    if size > cap:
        raise _too_large(what, str(size), cap)


def read_capped(stream: _Readable, cap: int, what: str, *, listed_size: int | None = None) -> bytes:
    """At most ``cap`` bytes from ``stream``; more is an IntegrityError naming ``what``.

    ``listed_size``: the size the listing reported, checked before reading.
    Memory is bounded by ``cap + READ_PIECE`` whatever the stream delivers.
    """
    if listed_size is not None:
        check_listed_size(listed_size, cap, what)
    data = bytearray()
    while len(data) <= cap:
        piece = stream.read(min(READ_PIECE, cap + 1 - len(data)))
        if not piece:
            return bytes(data)
        data += piece
    raise _too_large(what, f"more than {cap}", cap)
