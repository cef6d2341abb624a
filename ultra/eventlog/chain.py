"""The hash chain over the event log (pure): each stored event's hash covers the hash of
the event before it, its own `seq` and its canonical bytes (the stored JSON payload).

Rewriting, removing or reordering any stored event changes every hash after it, so a
chain head written down elsewhere (master_database.json records the one it was built
from) pins the whole log up to that point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

GENESIS = ""  # the "hash before the first event"


def link(prev: str, seq: int, payload: str) -> str:
    """The hash of the event stored at `seq` with `payload`, after one whose hash is `prev`."""
    return hashlib.sha256(f"{prev}\n{seq}\n{payload}".encode()).hexdigest()


def first_break(rows: Iterable[tuple[int, str | None, str]], prev: str = GENESIS) -> int | None:
    """The first `seq` whose stored hash is not the link of the one before, or None.

    `rows` are (seq, stored hash, payload) in `seq` order, from the start of the log (or
    from the event whose hash is `prev`).
    """
    for seq, stored, payload in rows:
        expected = link(prev, seq, payload)
        if stored != expected:
            return seq
        prev = expected
    return None


__all__ = ["first_break", "GENESIS", "link"]
