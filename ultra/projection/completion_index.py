"""The completion index: `completion_keys`, one row per stored `test.completed` (its
test key, seq and event id), derived from the log and never trusted blindly.

Resume looks a selection's keys up in it and replays count repeats with it. It is kept
beside a digest of what it should hold (rows, seq sum, max seq, key and id characters,
in `projection_state` under `completion_keys`), checked against the log's own aggregates
once per opened log before it is used; an index that disagrees (rows deleted, edited or
added) is rebuilt from the events (`index_completions`), and `ultra audit` compares it row
by row (`check_completion_index`, `repair_completion_index`).

`CompletionIndex.of(log)` is the index of one open log (checked once per log): the log
gives reads and a write transaction under its append lock, and knows nothing of the index.
"""

from __future__ import annotations

import itertools
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ultra import events as ev
from ultra.errors import UserError
from ultra.eventlog.event_stream import READ_BATCH, EventStream
from ultra.eventlog.store_tx import IN_CHUNK, Tx, in_chunks, patient

if TYPE_CHECKING:
    from ultra.eventlog.store import EventLog

__all__ = [
    "COMPLETIONS_OF_QUERY", "EARLIER_COMPLETION", "REPEATED_KEYS_QUERY", "REPEATED_SEQS_QUERY",
    "REPEATS_AFTER_QUERY", "RESUME_QUERY", "CompletionIndex",
]

_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()

INDEX_CHUNK = 100_000  # seqs of completion_keys indexed per transaction

# The queries whose access paths tests/test_store_plans.py pins with EXPLAIN QUERY PLAN.
# Resume: test keys and event ids of completions, from the covering (type, seq, ...) index.
RESUME_QUERY = (
    "SELECT seq, test_key, event_id FROM events WHERE type = 'test.completed' AND seq > ?"
    " ORDER BY seq LIMIT ?"
)
# Resume of a selection: its keys looked up in completion_keys' primary key.
COMPLETIONS_OF_QUERY = "SELECT test_key, event_id FROM completion_keys WHERE test_key IN"
# Duplicates: keys completed more than once, an ordered scan of completion_keys' key.
REPEATED_KEYS_QUERY = (
    "SELECT test_key FROM completion_keys WHERE seq <= ? GROUP BY test_key HAVING COUNT(*) > 1"
)
# A replay from zero: the seqs of every completion of those keys (primary-key look-ups).
REPEATED_SEQS_QUERY = (
    f"SELECT seq FROM completion_keys WHERE test_key IN ({REPEATED_KEYS_QUERY}) AND seq <= ?"
)
# Duplicates, incrementally: is an earlier completion of `e`'s test key stored?
EARLIER_COMPLETION = (
    "EXISTS (SELECT 1 FROM completion_keys p WHERE p.test_key = e.test_key AND p.seq < e.seq)"
)
# ... asked of the completions in a range of seqs.
REPEATS_AFTER_QUERY = (
    "SELECT e.seq FROM events e WHERE e.type = 'test.completed' AND e.seq > ? AND e.seq <= ?"
    f" AND {EARLIER_COMPLETION}"
)


INDEX_VERSION = 2
_LOG_COMPLETIONS = "type = 'test.completed' AND test_key IS NOT NULL"
_AGGREGATES = ("COUNT(*), COALESCE(SUM(seq), 0), COALESCE(MAX(seq), 0),"
               " COALESCE(SUM(LENGTH(test_key)), 0), COALESCE(SUM(LENGTH(event_id)), 0)")
INDEX_STATE_QUERY = ("SELECT version, last_seq, state FROM projection_state"
                     " WHERE name = 'completion_keys'")
INDEX_CHECK_QUERY = (f"SELECT p.version, p.last_seq, p.state, k.* FROM projection_state p,"
                     f" (SELECT {_AGGREGATES} FROM completion_keys) k"
                     " WHERE p.name = 'completion_keys'")
_DIGEST_FIELDS = ("rows", "seq_sum", "max_seq", "key_chars", "id_chars")
_EMPTY_DIGEST = (0, 0, 0, 0, 0)
Digest = tuple[int, int, int, int, int]


def _digest(row: Sequence[Any]) -> Digest:
    return tuple(int(x or 0) for x in row)  # type: ignore[return-value]


def _add_digests(a: Digest, b: Digest) -> Digest:
    return (a[0] + b[0], a[1] + b[1], max(a[2], b[2]), a[3] + b[3], a[4] + b[4])


def _encode_digest(d: Digest) -> str:
    return _encoder.encode(dict(zip(_DIGEST_FIELDS, d))).decode()


def _index_state(rows: Sequence[Sequence[Any]]) -> tuple[int, Digest] | None:
    """(last indexed seq, recorded digest) from the state row, None if missing or unreadable."""
    if not rows:
        return None
    version, last, state = rows[0][:3]
    if version != INDEX_VERSION or not isinstance(last, int):
        return None
    try:
        doc = _any_decoder.decode(state)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    values = [doc.get(f) for f in _DIGEST_FIELDS]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    return last, tuple(values)  # type: ignore[return-value]


def _index_problem(rows: Sequence[Sequence[Any]]) -> str | None:
    """What is wrong with the index, from INDEX_CHECK_QUERY's row (None: it agrees)."""
    state = _index_state(rows)
    if state is None:
        return "had lost its state"
    last, recorded = state
    actual = _digest(rows[0][3:])
    if actual[2] > last:
        return f"holds seq {actual[2]}, past the seq {last} its state says it reached"
    if actual != recorded:
        what = ("rows" if actual[0] != recorded[0] else "seqs" if actual[1:3] != recorded[1:3]
                else "test keys or event ids")
        return (f"does not match its recorded digest ({actual[0]} rows, {recorded[0]} recorded:"
                f" {what} deleted or edited)")
    return None


def _reset_index(tx: Tx) -> tuple[int, Digest]:
    """Empty completion_keys and its state (indexed up to seq 0), in `tx`."""
    tx.execute("DELETE FROM completion_keys")
    tx.execute("DELETE FROM projection_state WHERE name = 'completion_keys'")
    tx.execute("INSERT INTO projection_state (name, version, last_seq, state) VALUES"
               " ('completion_keys', ?, 0, ?)", (INDEX_VERSION, _encode_digest(_EMPTY_DIGEST)))
    return 0, _EMPTY_DIGEST


def _index_differences(read: Callable[..., list[Any]], limit: int) -> list[str]:
    """How completion_keys differs from the log's completions and from its digest."""
    state = _index_state(read(INDEX_STATE_QUERY))
    if state is None:
        return ["its state (projection_state 'completion_keys') is missing or unreadable"]
    last, digest = state
    out = []
    top = read("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0]
    if last > top:
        out.append(f"its state claims seq {last}, but the log ends at seq {top}")
    for sql, what in ((_INDEX_MISSING, f"of the log's completions up to seq {last} are missing"
                                       " from it"),
                      (_INDEX_EXTRA, "of its rows are no completion of the log (edited or added)")):
        count = read(f"SELECT COUNT(*) {sql}", (last,))[0][0]
        if count:
            seqs = read(f"SELECT seq {sql} ORDER BY seq LIMIT ?", (last, limit))
            shown = ", ".join(str(r[0]) for r in seqs) + (", ..." if count > limit else "")
            out.append(f"{count} {what} (seq {shown})")
    actual = _digest(read(f"SELECT {_AGGREGATES} FROM completion_keys")[0])
    if actual != digest:
        out.append(f"its rows do not match the digest its state recorded ({actual[0]} rows,"
                   f" {digest[0]} recorded)")
    return out


# The log's completions (up to a seq) that completion_keys lacks: a primary-key probe each.
_INDEX_MISSING = (
    "FROM events e WHERE e.type = 'test.completed' AND e.test_key IS NOT NULL AND e.seq <= ?"
    " AND NOT EXISTS (SELECT 1 FROM completion_keys k WHERE k.test_key = e.test_key"
    " AND k.seq = e.seq AND k.event_id = e.event_id)"
)
# Rows of completion_keys that are no completion of the log (or past the seq indexed).
_INDEX_EXTRA = (
    "FROM completion_keys k WHERE k.seq > ? OR NOT EXISTS (SELECT 1 FROM events e"
    " WHERE e.seq = k.seq AND e.type = 'test.completed' AND e.test_key = k.test_key"
    " AND e.event_id = k.event_id)"
)


# ---- reading ---------------------------------------------------------------------------


# completion_keys is derived from the log; its state (projection_state 'completion_keys',
# version INDEX_VERSION) records, with the last indexed seq, aggregates of its rows added
# up as they were indexed: count, sum and greatest seq, total test-key and event-id length.
# Deleted rows change the count and sums, edited keys their length: found by one scan.

_INDEXES: weakref.WeakKeyDictionary[EventLog, CompletionIndex] = weakref.WeakKeyDictionary()


class CompletionIndex:
    """The completion index of one open `EventLog`, and the duplicate detection it serves."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._read = log.read
        self._index_checked = False  # completion_keys checked against its digest

    @classmethod
    def of(cls, log: EventLog) -> CompletionIndex:
        """The index of `log`: one per open log, so it is checked once per log."""
        index = _INDEXES.get(log)
        if index is None:
            index = _INDEXES[log] = cls(log)
        return index

    def last_seq(self) -> int:
        return self.log.last_seq()

    def stream_marked(self, after_seq: int = 0, *, until_seq: int | None = None,
                      batch: int = READ_BATCH) -> EventStream:
        """Like the log's `stream`, and `.marked()` / `.with_earlier()` also say whether a
        completion repeats a stored one: duplicate detection, here beside the index it reads.

        The index is brought up to the stream's end first and asked once for the seqs of
        the completions that may repeat an earlier one (usually none), so the stream itself
        reads what a bare read does. A replay from zero asks for every completion of a key
        completed more than once (an ordered scan of that table: no sort, no memory that
        grows with the log); an incremental one probes its new rows. Only those seqs get a
        probe with `earlier_completions`."""
        until = self.last_seq() if until_seq is None else until_seq
        self.index_completions(until)
        if after_seq == 0:
            rows = self._read(REPEATED_SEQS_QUERY, (until, until))
        else:
            rows = self._read(REPEATS_AFTER_QUERY, (after_seq, until))
        return EventStream(self.log, after_seq, until, None, batch,
                           repeats={r[0] for r in rows}, earlier=self.earlier_completions)

    def earlier_completions(self, test_key: str, before_seq: int) -> list[tuple[int, ev.TestCompleted]]:
        """Stored completions of `test_key` with a smaller `seq` (decodable ones)."""
        self.index_completions(min(before_seq - 1, self.last_seq()))
        rows = self._read(
            "SELECT e.seq, e.payload FROM completion_keys k JOIN events e ON e.seq = k.seq"
            " WHERE k.test_key = ? AND k.seq < ? ORDER BY k.seq",
            (test_key, before_seq),
        )
        out = []
        for seq, payload in rows:
            try:
                event = ev.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if isinstance(event, ev.TestCompleted):
                out.append((seq, event))
        return out

    def repeated_test_keys(self, until_seq: int | None = None) -> set[str]:
        """Test keys with more than one stored completion (up to `until_seq`)."""
        until = self.last_seq() if until_seq is None else until_seq
        self.index_completions(until)
        return {r[0] for r in self._read(REPEATED_KEYS_QUERY, (until,))}

    @patient
    def index_completions(self, until_seq: int) -> None:
        """Extend completion_keys (test key, seq, event id of every completion) up to
        `until_seq`. Appenders never touch it: a random-key index on the append path
        dirtied a page per event. Readers that detect duplicates fill it here, in bulk
        and in key order, in one write transaction that racing readers serialize on.

        The index is derived data: before this log trusts it the first time, its
        aggregates are checked against those its state recorded as rows were added (one
        scan of the index), and an index that disagrees (rows deleted or edited) is
        rebuilt from the log, saying so on stderr. `check_completion_index` (audit)
        compares it with the log row by row."""
        if not self._index_checked:
            self._check_index_aggregates()
        while (self._indexed_seq(self._read) or 0) < until_seq:
            with self.log.locked() as tx:
                state = _index_state(tx.execute(INDEX_STATE_QUERY).fetchall())
                if state is None:  # its row deleted or unreadable: built anew from the log
                    print("ultra: note: the completion index had lost its state; rebuilding it"
                          " from the log", file=sys.stderr)
                    state = _reset_index(tx)
                done, digest = state
                # Chunks bound the sort's memory and let appenders in between.
                upto = min(until_seq, done + INDEX_CHUNK)
                if done >= upto:
                    return
                tx.execute(
                    "INSERT INTO completion_keys (test_key, seq, event_id)"
                    f" SELECT test_key, seq, event_id FROM events WHERE {_LOG_COMPLETIONS}"
                    " AND seq > ? AND seq <= ? ORDER BY test_key, seq"
                    # a rewound last_seq re-reads rows it has: they stay as they are (and
                    # the digest no longer matches: the next check rebuilds the index)
                    " ON CONFLICT DO NOTHING",
                    (done, upto),
                )
                added = _digest(tx.execute(
                    f"SELECT {_AGGREGATES} FROM events WHERE {_LOG_COMPLETIONS}"
                    " AND seq > ? AND seq <= ?", (done, upto)).fetchone())
                tx.execute(
                    "UPDATE projection_state SET last_seq = ?, state = ?"
                    " WHERE name = 'completion_keys'",
                    (upto, _encode_digest(_add_digests(digest, added))),
                )

    def _check_index_aggregates(self) -> None:
        """The cheap check: the index's row count, seq sum, greatest seq and key and id
        lengths, against its state (one statement: one snapshot); on a mismatch, again
        under the append lock, then the index is rebuilt from the log."""
        rows = self._read(INDEX_CHECK_QUERY)
        if _index_problem(rows) is not None:
            with self.log.locked() as tx:
                problem = _index_problem(tx.execute(INDEX_CHECK_QUERY).fetchall())
                if problem is not None:
                    print(f"ultra: note: the completion index {problem}; rebuilding it from the"
                          " log", file=sys.stderr)
                    _reset_index(tx)
        self._index_checked = True

    def check_completion_index(self, limit: int = 5) -> list[str]:
        """The full check (audit): completion_keys against the log's completions up to the
        seq its state names, row by row, and against its recorded digest. What differs,
        one line each (empty when it agrees). Read without a lock: a collector indexing
        meanwhile can make it report what `repair_completion_index` then does not find."""
        return _index_differences(self._read, limit)

    @patient
    def repair_completion_index(self, limit: int = 5) -> list[str]:
        """`check_completion_index` again under the append lock (nobody indexes meanwhile);
        if the index still differs it is dropped and rebuilt from the log. What differed."""
        with self.log.locked() as tx:
            problems = _index_differences(lambda sql, p=(): tx.execute(sql, p).fetchall(), limit)
            if problems:
                _reset_index(tx)
        self._index_checked = True
        if problems:
            self.index_completions(self.last_seq())
        return problems

    @staticmethod
    def _indexed_seq(read: Any) -> int | None:
        rows = read("SELECT last_seq FROM projection_state WHERE name = 'completion_keys'")
        return rows[0][0] if rows else None

    def completions_of(self, keys: Iterable[str]) -> Iterator[tuple[str, str]]:
        """(test key, event id) of the stored completions of `keys`: primary-key look-ups
        in completion_keys (brought up to date first), so the cost follows `keys`, which
        are read IN_CHUNK (512) at a time (a selection of a million keys is never held)."""
        try:
            self.index_completions(self.last_seq())
        except UserError:  # a log we may not write (a read-only file): scan it instead
            chosen = set(keys)
            yield from ((k, e) for k, e in self.completions() if k in chosen)
            return
        keys = iter(keys)
        while chunk := list(itertools.islice(keys, IN_CHUNK)):
            for marks, part in in_chunks(chunk):
                yield from self._read(f"{COMPLETIONS_OF_QUERY} ({marks})", part)

    def completions(self, *, batch: int = 5000) -> Iterator[tuple[str, str]]:
        """(test key, event id) of every stored completion, by `seq`: what resume needs,
        read from a covering index without decoding a payload."""
        after = 0
        while True:
            rows = self._read(RESUME_QUERY, (after, batch))
            for _, key, event_id in rows:
                yield key, event_id
            if len(rows) < batch:
                return
            after = rows[-1][0]
