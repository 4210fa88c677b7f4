"""Keep glibc's allocator from holding on to freed upload buffers.

Upload threads each get a malloc arena, and glibc raises its mmap threshold
after large frees, so 1-8 MiB part and block buffers end up in arenas that are
never trimmed: RSS grows with the number of parts (174 MiB peak for a 2 GiB
backup to S3).  A fixed 1 MiB mmap threshold returns large buffers to the
kernel on free and two arenas bound the rest (118 MiB for the same backup,
bench/s3_backup.py, docs/performance.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1024 * 1024
ARENA_MAX = 2


def bound_allocator() -> bool:
    """Apply the two mallopt settings; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))
