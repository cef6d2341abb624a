"""Give the C heap's free pages back to the system while a long run goes on.

glibc's malloc keeps what a process frees and returns to the system only the top of each
heap. A shard process frees most of what every test allocates (request and response bodies,
transcripts, rows), but a few longer-lived objects in between pin the rest, so its
resident memory rose about 3 KB a completed test while the live Python objects and SQLite's
cache stayed flat (tools/bench_memory.py; docs/benchmarks.md). `malloc_trim(0)` hands the
free pages inside the heaps back (`madvise`), which flattens it; off glibc this is a no-op.

glibc also gives each thread that allocates an arena of its own, and the store's worker
threads (SQLite's work) then fragment heaps of their own beside the main one: a shard's
anonymous memory rose 23 -> 36 MB over a 100,000-test run against 22 -> 26 with one arena
(`single_arena`: `mallopt(M_ARENA_MAX, 1)`, called before any thread starts; its few
threads barely contend, the dispatch runs in the main thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["TRIM_SECONDS", "release_free_memory", "single_arena"]

TRIM_SECONDS = 5.0  # how often a shard process trims (one trim of ~100 MB: about 1 ms)


M_ARENA_MAX = -8  # glibc's malloc.h


def _libc() -> tuple[Callable[[int], int] | None, Callable[[int, int], int] | None]:
    """glibc's (malloc_trim, mallopt), or Nones elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim, opt = (libc.malloc_trim, libc.mallopt) if libc is not None else (None, None)
    except (OSError, AttributeError):  # not glibc
        return None, None
    if trim is not None and opt is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        opt.argtypes, opt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return trim, opt


_TRIM, _MALLOPT = _libc()


def single_arena() -> None:
    """One malloc arena for every thread of this process (glibc), else nothing."""
    if _MALLOPT is not None:
        _MALLOPT(M_ARENA_MAX, 1)


def release_free_memory() -> None:
    """Return the free pages of the process's heaps to the system (glibc), else nothing."""
    if _TRIM is not None:
        _TRIM(0)
