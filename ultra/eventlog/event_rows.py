"""Rows of the events table: an event made a row (`event_row`), an imported JSON line
checked and made one (`raw_row`: known types validated, times and identities sane, a
stored id never given other content), and the transcripts an import carries beside its
events (`ultra events --transcripts`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from ultra import events as ev
from ultra.errors import ImportConflict, UserError
from ultra.eventlog.store_tx import Tx, in_chunks

if TYPE_CHECKING:
    from ultra.eventlog.store import EventLog

_TAGS: dict[type, str] = {cls: tag for tag, cls in ev.EVENT_TYPES.items()}
_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()

Row = tuple[str, str, str, str | None, str | None, str | None, str]
IMPORT_LINE_LIMIT = 16 * 2**20  # bytes: an event line is a few KB; anything near this is not one


def event_row(event: ev.Event) -> Row:
    """The stored row of one event: indexable columns plus the msgspec JSON payload."""
    try:
        tag = _TAGS[type(event)]
    except KeyError:
        raise TypeError(f"not an ultra event: {type(event).__name__}") from None
    return (
        event.event_id,
        tag,
        event.recorded_at,
        getattr(event, "test_key", None),
        getattr(event, "model", None),
        getattr(event, "run_id", None),
        _encoder.encode(event).decode(),
    )


def _impossible_time(value: Any) -> bool:
    """Whether `value` has the log's time form but names no real time: the schema's pattern
    alone lets 2026-02-30T25:61:61Z through (other malformed values are the schema's to
    refuse, with its own message)."""
    import datetime as dt

    if not isinstance(value, str) or not re.fullmatch(ev.TIMESTAMP_PATTERN, value):
        return False
    try:
        dt.datetime.fromisoformat(value[:19])
    except ValueError:
        return True
    return False


def _bad_time(obj: dict) -> tuple[str, Any] | None:
    """The first time field inside an event (besides recorded_at) that is not a real UTC
    time in the log's form: a test's `started_at` (or empty), a selector's bounds."""
    started = obj.get("started_at")
    if started not in (None, "") and (not isinstance(started, str) or _impossible_time(started)
                                      or not re.fullmatch(ev.TIMESTAMP_PATTERN, started)):
        return "started_at", started
    selector = obj.get("selector")
    if isinstance(selector, dict):
        for name in ("recorded_before", "recorded_after"):
            if _impossible_time(selector.get(name)):
                return f"selector.{name}", selector[name]
    return None


def raw_row(line: str | bytes, where: str) -> Row:
    """The row of one JSON line as `ultra events` prints it (`seq` is dropped).

    Known types are validated against the schema of their version (`events.decode`'s
    rules); unknown types (a newer writer's) are stored as they are, provided their
    identity (`event_id`, `type`, `version`, `recorded_at`) is well formed.
    """
    try:
        obj = _any_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply to be an event") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: not a JSON object")
    obj.pop("seq", None)
    tag = obj.get("type")
    if not isinstance(tag, str) or not tag:
        raise UserError(f"{where}: event without a string 'type'")
    if _impossible_time(obj.get("recorded_at")):
        raise UserError(f"{where}: recorded_at {str(obj.get('recorded_at'))[:40]!r} is not a real"
                        " UTC time (YYYY-MM-DDTHH:MM:SS[.f]Z)")
    if tag in ev.EVENT_TYPES:
        problem = ev.require_identity(obj)
        if problem is not None:
            raise UserError(f"{where}: {problem}")
        try:
            event = ev.from_builtins(obj)
        except msgspec.ValidationError as exc:
            raise UserError(f"{where}: invalid {tag} event ({exc})") from None
        bad = _bad_time(obj)
        if bad is not None:
            raise UserError(f"{where}: {bad[0]} {str(bad[1])[:40]!r} is not a real UTC time"
                            " (YYYY-MM-DDTHH:MM:SS[.f]Z)")
        # Store the line itself, not a re-encoding: fields a newer writer added survive.
        return (*event_row(event)[:-1], _encoder.encode(obj).decode())  # type: ignore[return-value]
    try:
        msgspec.convert(obj, _Identity)
    except msgspec.ValidationError as exc:
        raise UserError(f"{where}: event of unknown type {tag!r} with a bad identity ({exc})") from None

    def text(name: str) -> str | None:
        value = obj.get(name)
        return value if isinstance(value, str) else None

    return (
        obj["event_id"],
        obj["type"],
        obj["recorded_at"],
        text("test_key"),
        text("model"),
        text("run_id"),
        _encoder.encode(obj).decode(),
    )


class _Identity(msgspec.Struct):
    """What an event of a type this version does not know must still carry."""

    event_id: ev.EventId
    type: str
    recorded_at: ev.Timestamp
    version: int | None = None


def _check_conflicts(conn: Tx, batch: list[tuple[Row, str]]) -> None:
    """Imported rows whose `event_id` is already stored (or repeated in the batch) must
    carry the same event, else the import is a conflict (raised; the caller rolls back)."""
    first: dict[str, tuple[Row, str]] = {}
    for row, where in batch:
        seen = first.setdefault(row[0], (row, where))
        if seen[0] is not row and not _same_event(seen[0][-1], row[-1]):
            raise ImportConflict(f"{where}: event {row[0]!r} differs from the one on {seen[1]}"
                                 " under the same event_id; nothing imported")
    for event_id, seq, payload in _stored(conn, list(first), "event_id, seq, payload"):
        row, where = first[event_id]
        if not _same_event(payload, row[-1]):
            raise ImportConflict(f"{where}: event {event_id!r} differs from the stored event seq"
                                 f" {seq} with that event_id (a changed event is a conflict);"
                                 " nothing imported")


def _stored(tx: Tx, ids: list[str], columns: str) -> Iterator[tuple[Any, ...]]:
    """`columns` of the stored events among `ids` (IN_CHUNK ids a query)."""
    for marks, part in in_chunks(ids):
        yield from tx.execute(f"SELECT {columns} FROM events WHERE event_id IN ({marks})", part).fetchall()


def _same_event(a: str, b: str) -> bool:
    """Same JSON content (key order aside)."""
    return a == b or _any_decoder.decode(a) == _any_decoder.decode(b)


class _TranscriptRef(msgspec.Struct):
    transcript: str | None = None


_ref_decoder = msgspec.json.Decoder(_TranscriptRef)


def transcript_ref(payload: str | bytes) -> str | None:
    """The transcript digest a stored event payload names, if any."""
    if '"transcript":"' not in (payload if isinstance(payload, str) else payload.decode("utf-8", "replace")):
        return None
    try:
        ref = _ref_decoder.decode(payload).transcript
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return ref if isinstance(ref, str) else None


class _CarriedTranscripts:
    """The transcript lines of an import (each checked against its digest as it is read)
    and the newly stored events that name them; rows are written as both are known, in the
    import's transaction. A line follows its event in `ultra events --transcripts`, so what
    waits is a batch's worth at most."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.waiting: list[tuple[int, str]] = []  # (seq, digest) of stored events
        self.written = 0

    def take(self, line: str | bytes, where: str) -> bool:
        from ultra import transcripts as tr

        if not tr.is_line(line):
            return False
        digest, blob = tr.parse_line(line, where)
        self.blobs[digest] = blob
        return True

    def stored(self, log: EventLog, tx: Tx, batch: list[tuple[Row, str]], seqs: dict[str, int]) -> None:
        for row, _ in batch:
            seq = seqs.get(row[0])
            if seq is not None and (ref := transcript_ref(row[-1])) is not None:
                self.waiting.append((seq, ref))
        self._flush(log, tx)

    def _flush(self, log: EventLog, tx: Tx) -> None:
        ready = [(seq, d, self.blobs[d]) for seq, d in self.waiting if d in self.blobs]
        if ready:
            ready.sort()
            log._insert_transcripts(tx, ready)
            self.written += len(ready)
            self.waiting = [(seq, d) for seq, d in self.waiting if d not in self.blobs]

    def finish(self, log: EventLog, tx: Tx) -> None:
        self._flush(log, tx)


__all__ = ["event_row", "IMPORT_LINE_LIMIT", "raw_row", "Row", "transcript_ref"]
