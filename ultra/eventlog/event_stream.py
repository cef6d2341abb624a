"""Events by `seq`, read in batches and decoded (older versions upgraded, unknown types and
undecodable rows counted, not fatal). The store makes plain streams; the completion index
(ultra/projection/completion_index.py, the projection side) makes the ones that mark completions
repeating an earlier one, by handing in the seqs that may and how to find the earlier."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ultra import events as ev

if TYPE_CHECKING:
    from ultra.eventlog.store import EventLog

READ_BATCH = 1000  # events a read asks for at a time: ~1.6 MB of rows held, however long the log


class EventStream:
    """Events by `seq`, read in batches; counts the rows it had to skip.

    `skipped_unknown`: rows of types this reader does not know (a newer writer's).
    `undecodable`: rows of known types whose payload does not decode (seqs in
    `undecodable_seqs`, the first 100).
    """

    def __init__(
        self,
        log: EventLog,
        after_seq: int,
        until_seq: int | None,
        types: Sequence[str] | None,
        batch: int,
        repeats: set[int] | None = None,
        earlier: Callable[[str, int], list[tuple[int, ev.TestCompleted]]] | None = None,
    ) -> None:
        self._log = log
        self._after = after_seq
        self._until = until_seq
        self._types = list(types) if types is not None else None
        self._batch = batch
        # `repeats`: the seqs of completions that may repeat an earlier one (usually none),
        # `earlier` finds those earlier ones (CompletionIndex.stream_marked gives both).
        self._repeats = repeats
        self._earlier = earlier
        self.skipped_unknown = 0
        self.undecodable = 0
        self.undecodable_seqs: list[int] = []

    def _query(self) -> tuple[str, list[Any]]:
        where = ["seq > ?"]
        params: list[Any] = []
        if self._until is not None:
            where.append("seq <= ?")
            params.append(self._until)
        if self._types is not None:
            where.append(f"type IN ({', '.join('?' * len(self._types))})")
            params.extend(self._types)
        sql = f"SELECT seq, type, payload FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        return sql, params

    def _decoded(self, probe: bool = False) -> Iterator[tuple[int, ev.Event, Any]]:
        """(seq, event, mark); mark: `()` or False unless the seq may repeat an earlier
        completion, then True, or with `probe` its earlier completions."""
        if self._types == []:
            return
        sql, params = self._query()
        after = self._after
        known = ev.EVENT_TYPES
        decode, decode_current = ev.decode, ev.decode_current
        repeats = self._repeats
        plain: Any = () if probe else False
        read = self._log._read
        batch = self._batch
        while True:
            rows = read(sql, [after, *params, batch])
            for seq, tag, payload in rows:
                if tag not in known:
                    self.skipped_unknown += 1
                    continue
                try:
                    event = decode_current(payload)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    try:
                        event = decode(payload)  # an older version, upgraded
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        self.undecodable += 1
                        if len(self.undecodable_seqs) < 100:
                            self.undecodable_seqs.append(seq)
                        continue
                if not repeats or seq not in repeats:
                    yield seq, event, plain
                elif not probe:
                    yield seq, event, True
                elif isinstance(event, ev.TestCompleted):
                    yield seq, event, [e for _, e in self._earlier(event.test_key, seq)]  # type: ignore[misc]
                else:
                    yield seq, event, ()
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def __iter__(self) -> Iterator[tuple[int, ev.Event]]:
        for seq, event, _ in self._decoded():
            yield seq, event

    def marked(self) -> Iterator[tuple[int, ev.Event, int]]:
        """(seq, event, repeat): repeat is truthy when the event is a completion whose test
        key may have an earlier stored completion (a probe with `earlier_completions` says)."""
        return self._decoded()

    def with_earlier(self) -> Iterator[tuple[int, ev.Event, Sequence[ev.TestCompleted]]]:
        """(seq, event, earlier): the stored completions of a completion's test key with a
        smaller seq, probed only for keys that repeat (usually none, so usually `()`)."""
        return self._decoded(probe=True)

    @property
    def skipped(self) -> int:
        return self.skipped_unknown + self.undecodable


__all__ = ["EventStream", "READ_BATCH"]
