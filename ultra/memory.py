"""Give the C heap's free pages back to the system while a long run goes on.

glibc's malloc keeps what a process frees and returns to the system only the top of each
heap. A shard process frees most of what every test allocates (request and response bodies,
transcripts, rows), but a few longer-lived objects in between pin the rest, so its
resident memory rose about 3 KB a completed test while the live Python objects and SQLite's
cache stayed flat (tools/bench_memory.py; docs/benchmarks.md). `malloc_trim(0)` hands the
free pages inside the heaps back (`madvise`), which flattens it; off glibc this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["TRIM_SECONDS", "release_free_memory"]

TRIM_SECONDS = 5.0  # how often a shard process trims (one trim of ~100 MB: about 1 ms)


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the free pages of the process's heaps to the system (glibc), else nothing."""
    if _TRIM is not None:
        _TRIM(0)
