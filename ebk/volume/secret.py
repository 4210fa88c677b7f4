"""A key in locked, wiped memory: a bytearray mlock()ed where the kernel allows it.

Python copies ``bytes`` freely and never wipes them, so a volume key lives in
one bytearray from its creation (read from /dev/urandom straight into it) or
its unwrap (the provider's ``bytes`` result is copied in and dropped at once)
until ``close()`` zeroes it.  It reaches children only through pipes
(``pipe_with``), never argv, environment or a file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from types import TracebackType

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

KEY_SIZE = 64  # AES-256-XTS needs 512 bits (fscrypt v2 master key, LUKS2 keyslot key)


class SecretKey:
    """``size`` secret bytes; use as a context manager so they are wiped on every path."""

    def __init__(self, size: int = KEY_SIZE) -> None:
        self.buf = bytearray(size)
        self._view = (ctypes.c_char * size).from_buffer(self.buf)
        self.address = ctypes.addressof(self._view)
        self.locked = _libc.mlock(self.address, size) == 0

    @classmethod
    def random(cls, size: int = KEY_SIZE) -> SecretKey:
        key = cls(size)
        with open("/dev/urandom", "rb", buffering=0) as rng:
            if rng.readinto(memoryview(key.buf)) != size:
                key.close()
                raise OSError("short read from /dev/urandom")
        return key

    @classmethod
    def adopt(cls, data: bytes) -> SecretKey:
        """Copy an unwrapped key in; the caller drops ``data`` right after."""
        key = cls(len(data))
        key.buf[:] = data
        return key

    def __len__(self) -> int:
        return len(self.buf)

    def pipe_with(self) -> int:
        """A pipe read end holding the key (64 bytes fit the pipe buffer), for a child's fd."""
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, memoryview(self.buf))
        finally:
            os.close(write_end)
        return read_end

    def close(self) -> None:
        if self.buf:
            ctypes.memset(self.address, 0, len(self.buf))
            if self.locked:
                _libc.munlock(self.address, len(self.buf))
            del self._view
            self.buf = bytearray()

    def __enter__(self) -> SecretKey:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
