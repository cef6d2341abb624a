"""`ultra import`: JSON lines (as `ultra events` prints them, transcripts included) appended
all or none, each line checked (a mixin of `EventLog`: the log gives the transaction and
the insert)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import msgspec

from ultra import events as ev
from ultra.errors import UserError
from ultra.eventlog.event_rows import IMPORT_LINE_LIMIT, Row, _CarriedTranscripts, _check_conflicts, raw_row
from ultra.eventlog.store_tx import Tx

__all__ = ["ImportResult", "RawImport"]


class ImportResult(msgspec.Struct, frozen=True):
    read: int  # JSON lines read (blank lines aside)
    stored: int  # newly stored (the rest were already in the log)
    unknown_types: int  # lines of types this version does not know, stored as they are
    transcripts: int = 0  # transcripts stored with the newly stored events


class RawImport:
    """The import half of an `EventLog`."""

    _transaction: Callable[[], AbstractContextManager[Tx]]
    _insert: Callable[..., dict[str, int]]

    @staticmethod
    def read_lines(fh: Any, source: str, limit: int = IMPORT_LINE_LIMIT) -> Iterator[bytes]:
        """The lines of a binary file, each at most `limit` bytes (a longer one, or an
        endless one such as /dev/zero, is refused with its line number instead of read
        whole); a UTF-8 byte order mark before the first line is dropped."""
        lineno = 0
        while line := fh.readline(limit + 1):
            lineno += 1
            if len(line) > limit:
                raise UserError(f"{source}:{lineno}: line longer than {limit // 2**20} MB: refused,"
                                " nothing imported")
            yield line.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else line

    def append_raw(self, lines: Iterable[str | bytes], *, source: str = "input") -> ImportResult:
        """Append JSON lines (as `ultra events` prints them): all of them, or none.

        A malformed line, or one whose `event_id` is stored (or earlier in the input) with
        different content, raises `UserError` naming `source:line`, and nothing is stored.
        """
        read = unknown = 0
        batch: list[tuple[Row, str]] = []
        stored = 0
        carried = _CarriedTranscripts()
        with self._transaction() as tx:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f"{source}:{lineno}"
                if carried.take(line, where):  # a transcript line (`ultra events --transcripts`)
                    continue
                row = raw_row(line, where)
                read += 1
                unknown += row[1] not in ev.EVENT_TYPES
                batch.append((row, where))
                if len(batch) >= 5000:
                    _check_conflicts(tx, batch)
                    stored += len(new := self._insert(tx, [row for row, _ in batch], checked=True))
                    carried.stored(self, tx, batch, new)
                    batch.clear()
            if batch:
                _check_conflicts(tx, batch)
                stored += len(new := self._insert(tx, [row for row, _ in batch], checked=True))
                carried.stored(self, tx, batch, new)
            carried.finish(self, tx)
        return ImportResult(read=read, stored=stored, unknown_types=unknown,
                            transcripts=carried.written)
