"""The transcripts table beside the events (ultra/transcripts/__init__.py): rows keyed by
their event's seq, written in the events' transaction, read back by seq; and the test
event `ultra show` opens (a mixin of `EventLog`: the log gives the reads)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ultra.eventlog.event_rows import transcript_ref
from ultra.eventlog.store_tx import Tx

__all__ = ["TranscriptTable"]


class TranscriptTable:
    """The transcript half of an `EventLog`."""

    _read: Callable[..., list[Any]]

    def _insert_transcripts(self, tx: Tx, rows: list[tuple[int, str, bytes]]) -> None:
        """Store (seq, digest, compressed bytes) rows, in seq order."""
        tx.executemany("INSERT INTO transcripts (seq, digest, data) VALUES (?, ?, ?)", rows)

    def transcript_at(self, seq: int) -> tuple[str, bytes] | None:
        """(digest, compressed bytes) stored for the event at `seq`, if any."""
        rows = self._read("SELECT digest, data FROM transcripts WHERE seq = ?", (seq,))
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    def transcript_rows(self, *, batch: int = 1000) -> Iterator[tuple[int, str, bytes]]:
        """(seq, digest, compressed bytes) of every stored transcript, by seq."""
        after = -1
        while True:
            rows = self._read("SELECT seq, digest, data FROM transcripts WHERE seq > ?"
                              " ORDER BY seq LIMIT ?", (after, batch))
            yield from ((seq, d, bytes(b)) for seq, d, b in rows)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def transcript_refs(self, *, batch: int = 5000) -> Iterator[tuple[int, str, str | None, str]]:
        """(seq, event_id, test_key, digest) of every test event that names a transcript."""
        after = 0
        sql = ("SELECT seq, event_id, test_key, payload FROM events WHERE seq > ?"
               " AND type IN ('test.completed', 'test.errored') AND payload LIKE ?"
               " ORDER BY seq LIMIT ?")
        while True:
            rows = self._read(sql, (after, '%"transcript":"%', batch))
            for seq, event_id, key, payload in rows:
                ref = transcript_ref(payload)
                if ref is not None:
                    yield seq, event_id, key, ref
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def test_event(self, key_or_id: str) -> tuple[int, str] | None:
        """(seq, payload) of the test event with this event id, else the last test event
        of this test key."""
        rows = self._read("SELECT seq, payload FROM events WHERE event_id = ?"
                          " AND type IN ('test.completed', 'test.errored')", (key_or_id,))
        if not rows:
            rows = self._read("SELECT seq, payload FROM events WHERE test_key = ?"
                              " AND type IN ('test.completed', 'test.errored')"
                              " ORDER BY seq DESC LIMIT 1", (key_or_id,))
        return (rows[0][0], rows[0][1]) if rows else None
