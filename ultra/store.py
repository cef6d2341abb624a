"""The event log: one append-only SQLite table of events, ordered by `seq`.

Many writer processes append at once: each batch is one `BEGIN IMMEDIATE` transaction,
retried with backoff while another writer holds the lock, so "database is locked" never
reaches a user. Readers stream by `seq` in batches, so memory does not grow with the log.
The SQL stays plain (no SQLite-only meaning) so the log can move to a server store later.
"""

from __future__ import annotations

import importlib.resources
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import msgspec

from ultra import chain
from ultra import events as ev
from ultra.errors import UserError

BUSY_TIMEOUT_S = 5.0  # SQLite's own wait for a lock, per attempt
LOCK_PATIENCE_S = 600.0  # total time a writer keeps retrying before giving up
# Under many busy writers SQLite's passive checkpoints never find a moment to restart the
# WAL, which then grows without bound (8 GB for 1M events with 4 writers): past this size a
# writer forces a checkpoint that waits for the others, and truncates the WAL.
WAL_TRUNCATE_BYTES = 64 * 2**20
MIGRATIONS_TABLE = "ultra_migrations"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[\w.-]+\.sql$")

# Rows arrive here already free of stored event ids, with seq and hash assigned under the
# write lock; the triggers refuse anything else.
_INSERT = (
    "INSERT INTO events (seq, event_id, type, recorded_at, test_key, model, run_id, payload, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
GUARD_TRIGGERS = ("events_no_update", "events_no_delete", "events_no_overwrite")
DIALECT = "sqlite"
_TAGS: dict[type, str] = {cls: tag for tag, cls in ev.EVENT_TYPES.items()}
_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()

Row = tuple[str, str, str, str | None, str | None, str | None, str]


# ---- migrations ----------------------------------------------------------------------


def migrations_dir() -> Traversable:
    """`ultra/_migrations/<dialect>` in an installed wheel, else the repo's `migrations/`."""
    packaged = importlib.resources.files("ultra") / "_migrations"
    if packaged.is_dir():
        return packaged / DIALECT
    return Path(__file__).resolve().parent.parent / "migrations" / DIALECT


def load_migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every `NNNN_*.sql`, in order."""
    found = []
    for entry in migrations_dir().iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if not found or len(set(versions)) != len(versions):
        raise RuntimeError(f"broken migrations directory: {versions}")
    return found


def _statements(sql: str) -> Iterator[str]:
    """Split a script into statements; `complete_statement` keeps trigger bodies whole."""
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        raise RuntimeError(f"incomplete SQL statement in migration: {buf[:60]!r}")


# ---- rows ------------------------------------------------------------------------------


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
    if not isinstance(obj, dict):
        raise UserError(f"{where}: not a JSON object")
    obj.pop("seq", None)
    tag = obj.get("type")
    if not isinstance(tag, str) or not tag:
        raise UserError(f"{where}: event without a string 'type'")
    if tag in ev.EVENT_TYPES:
        problem = ev.require_identity(obj)
        if problem is not None:
            raise UserError(f"{where}: {problem}")
        try:
            event = ev.from_builtins(obj)
        except msgspec.ValidationError as exc:
            raise UserError(f"{where}: invalid {tag} event ({exc})") from None
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


def _chain_existing(conn: sqlite3.Connection) -> None:
    """Chain the events of a log written before the chain existed (migration 0003).

    The update guard is lifted for this one transaction and restored as it was: the
    migration is the only writer that may ever fill in a stored row.
    """
    if conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is None:
        return
    (guard,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'events_no_update'"
    ).fetchone()
    conn.execute("DROP TRIGGER events_no_update")
    prev, after = chain.GENESIS, 0
    while True:
        rows = conn.execute(
            "SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT 5000", (after,)
        ).fetchall()
        if not rows:
            break
        updates = []
        for seq, payload in rows:
            prev = chain.link(prev, seq, payload)
            updates.append((prev, seq))
        conn.executemany("UPDATE events SET hash = ? WHERE seq = ?", updates)
        after = rows[-1][0]
    conn.execute(guard)


class _Identity(msgspec.Struct):
    """What an event of a type this version does not know must still carry."""

    event_id: ev.EventId
    type: str
    recorded_at: ev.Timestamp
    version: int | None = None


def _check_conflicts(conn: sqlite3.Connection, batch: list[tuple[Row, str]]) -> None:
    """Imported rows whose `event_id` is already stored (or repeated in the batch) must
    carry the same event, else the import is a conflict (raised; the caller rolls back)."""
    first: dict[str, tuple[Row, str]] = {}
    for row, where in batch:
        seen = first.setdefault(row[0], (row, where))
        if seen[0] is not row and not _same_event(seen[0][-1], row[-1]):
            raise UserError(f"{where}: event {row[0]!r} differs from the one on {seen[1]} under"
                            " the same event_id; nothing imported")
    ids = list(first)
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        found = conn.execute(
            f"SELECT event_id, seq, payload FROM events WHERE event_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        ).fetchall()
        for event_id, seq, payload in found:
            row, where = first[event_id]
            if not _same_event(payload, row[-1]):
                raise UserError(f"{where}: event {event_id!r} differs from the stored event seq"
                                f" {seq} with that event_id (a changed event is a conflict);"
                                " nothing imported")


def _same_event(a: str, b: str) -> bool:
    """Same JSON content (key order aside)."""
    return a == b or _any_decoder.decode(a) == _any_decoder.decode(b)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


# ---- reading ---------------------------------------------------------------------------


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
        mark_repeats: bool,
    ) -> None:
        self._log = log
        self._after = after_seq
        self._until = until_seq
        self._types = list(types) if types is not None else None
        self._batch = batch
        self._mark = mark_repeats
        # A replay from zero asks SQLite once for the keys completed more than once (an
        # ordered scan of the test-key index); only those need a probe. Memory grows with
        # duplicated keys, not with events. Incremental runs probe per new row instead.
        self._repeat_keys: set[str] | None = None
        if mark_repeats and after_seq == 0:
            self._repeat_keys = log.repeated_test_keys(until_seq)
        self.skipped_unknown = 0
        self.undecodable = 0
        self.undecodable_seqs: list[int] = []

    def _query(self) -> tuple[str, list[Any]]:
        cols = "e.seq, e.type, e.payload"
        if self._repeat_keys is not None:
            cols += ", e.test_key"
        elif self._mark:
            # Is an earlier completion of the same test stored? Plain SQL, answered from
            # the (test_key, type, seq) index, so duplicate detection costs no memory.
            cols += (
                ", CASE WHEN e.type = 'test.completed' AND EXISTS (SELECT 1 FROM events p"
                " WHERE p.test_key = e.test_key AND p.type = 'test.completed'"
                " AND p.seq < e.seq) THEN 1 ELSE 0 END"
            )
        where = ["e.seq > ?"]
        params: list[Any] = []
        if self._until is not None:
            where.append("e.seq <= ?")
            params.append(self._until)
        if self._types is not None:
            where.append(f"e.type IN ({', '.join('?' * len(self._types))})")
            params.extend(self._types)
        sql = f"SELECT {cols} FROM events e WHERE {' AND '.join(where)} ORDER BY e.seq LIMIT ?"
        return sql, params

    def _decoded(self) -> Iterator[tuple[int, ev.Event, int]]:
        if self._types == []:
            return
        sql, params = self._query()
        after = self._after
        known = ev.EVENT_TYPES
        decode = ev.decode
        repeat_keys = self._repeat_keys
        mark = self._mark
        while True:
            rows = self._log._read(sql, [after, *params, self._batch])
            for row in rows:
                seq, tag = row[0], row[1]
                if tag not in known:
                    self.skipped_unknown += 1
                    continue
                try:
                    event = decode(row[2])
                except (msgspec.DecodeError, msgspec.ValidationError):
                    self.undecodable += 1
                    if len(self.undecodable_seqs) < 100:
                        self.undecodable_seqs.append(seq)
                    continue
                if repeat_keys is not None:
                    yield seq, event, tag == "test.completed" and row[3] in repeat_keys
                else:
                    yield seq, event, row[3] if mark else 0
            if len(rows) < self._batch:
                return
            after = rows[-1][0]

    def __iter__(self) -> Iterator[tuple[int, ev.Event]]:
        for seq, event, _ in self._decoded():
            yield seq, event

    def marked(self) -> Iterator[tuple[int, ev.Event, int]]:
        """(seq, event, repeat): repeat is truthy when the event is a completion whose test
        key may have an earlier stored completion (a probe with `earlier_completions` says)."""
        return self._decoded()

    @property
    def skipped(self) -> int:
        return self.skipped_unknown + self.undecodable


# ---- the log ---------------------------------------------------------------------------


class EventLog:
    """An open event log. Thread-safe (one lock), usable from trio worker threads."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._wal_path = f"{path}-wal"
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path | str, *, create: bool = True) -> EventLog:
        """Open (and if `create`, create) the log at `path`, applying pending migrations.

        Anything that is not a usable ultra event log raises `UserError` with one line.
        """
        path = Path(path)
        if path.is_dir():
            raise UserError(f"{path}: is a directory, not an event log")
        if path.exists():
            try:
                with path.open("rb") as fh:
                    head = fh.read(16)
            except OSError as exc:
                raise UserError(f"{path}: cannot read the event log ({exc.strerror})") from None
            if head and head != _SQLITE_MAGIC:
                raise UserError(f"{path}: not an SQLite database, so not an ultra event log")
            if not head and not create:
                raise UserError(f"{path}: empty file, not an ultra event log")
        elif not create:
            raise UserError(f"{path}: no event log there")
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"{path.parent}: cannot create directory ({exc.strerror})") from None
        try:
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise UserError(f"{path}: cannot open the event log ({exc})") from None
        log = cls(conn, path)
        try:
            log._prepare(create)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise UserError(f"{path}: not a usable SQLite database ({exc})") from None
        except BaseException:
            conn.close()
            raise
        return log

    def _prepare(self, create: bool) -> None:
        conn = self._conn
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if MIGRATIONS_TABLE not in tables and (tables or not create):
            raise UserError(f"{self.path}: an SQLite database, but not an ultra event log")
        self._retrying(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
        # NORMAL is durable against process crashes in WAL mode; only power loss may lose
        # the last commits, never tear one.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: the unique/test-key indexes
        migrations = load_migrations()
        applied = self._applied_migrations() if MIGRATIONS_TABLE in tables else set()
        if all(v in applied for v, _, _ in migrations):
            return  # nothing to write: read-only files stay readable
        with self._transaction() as tx:
            tx.execute(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            applied = self._applied_migrations()  # again, under the lock: racing openers
            for version, name, sql in migrations:
                if version in applied:
                    continue
                for stmt in _statements(sql):
                    tx.execute(stmt)
                if version == 3:
                    _chain_existing(tx)
                tx.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, ev.utc_now()),
                )

    def _applied_migrations(self) -> set[int]:
        return {r[0] for r in self._conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}

    # -- locking --

    def _retrying(self, op: Any) -> Any:
        """Run `op`, retrying with jittered backoff while the database is busy."""
        deadline = time.monotonic() + LOCK_PATIENCE_S
        delay = 0.002
        while True:
            try:
                return op()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() > deadline:
                    raise UserError(
                        f"{self.path}: event log busy for {LOCK_PATIENCE_S:.0f} s; is a writer stuck?"
                    ) from None
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.25)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under `BEGIN IMMEDIATE` (the write lock taken up front)."""
        conn = self._conn
        with self._lock:
            self._retrying(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._retrying(lambda: conn.execute("COMMIT"))

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._retrying(lambda: self._conn.execute(sql, params).fetchall())

    # -- writing --

    def append(self, events: Iterable[ev.Event]) -> int:
        """Append a batch in one transaction; returns how many were new (by `event_id`)."""
        rows = [event_row(e) for e in events]
        if not rows:
            return 0
        with self._transaction() as conn:
            stored = self._insert(conn, rows)
        self._bound_wal()
        return stored

    def _insert(self, conn: sqlite3.Connection, rows: list[Row]) -> int:
        """Store the rows whose event ids are new, chained after the current head; inside
        the write transaction, so seq and hash are assigned by one writer at a time."""
        fresh: dict[str, Row] = {}
        for row in rows:
            fresh.setdefault(row[0], row)
        ids = list(fresh)
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            stored = conn.execute(
                f"SELECT event_id FROM events WHERE event_id IN ({', '.join('?' * len(part))})",
                part,
            ).fetchall()
            for (event_id,) in stored:
                del fresh[event_id]
        if not fresh:
            return 0
        head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = head if head else (0, chain.GENESIS)
        out = []
        link = chain.link
        for row in fresh.values():
            seq += 1
            prev = link(prev, seq, row[6])
            out.append((seq, *row, prev))
        conn.executemany(_INSERT, out)
        return len(out)

    def _bound_wal(self) -> None:
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        if size > WAL_TRUNCATE_BYTES:
            with self._lock:
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except sqlite3.OperationalError:
                    pass  # busy: the next append tries again

    def append_raw(self, lines: Iterable[str | bytes], *, source: str = "input") -> ImportResult:
        """Append JSON lines (as `ultra events` prints them): all of them, or none.

        A malformed line, or one whose `event_id` is stored (or earlier in the input) with
        different content, raises `UserError` naming `source:line`, and nothing is stored.
        """
        read = unknown = 0
        batch: list[tuple[Row, str]] = []
        stored = 0
        with self._transaction() as conn:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f"{source}:{lineno}"
                row = raw_row(line, where)
                read += 1
                unknown += row[1] not in ev.EVENT_TYPES
                batch.append((row, where))
                if len(batch) >= 5000:
                    _check_conflicts(conn, batch)
                    stored += self._insert(conn, [row for row, _ in batch])
                    batch.clear()
            if batch:
                _check_conflicts(conn, batch)
                stored += self._insert(conn, [row for row, _ in batch])
        return ImportResult(read=read, stored=stored, unknown_types=unknown)

    # -- reading --

    def stream(
        self,
        after_seq: int = 0,
        *,
        until_seq: int | None = None,
        types: Sequence[str] | None = None,
        batch: int = 5000,
    ) -> EventStream:
        """Events with `after_seq < seq <= until_seq`, in `seq` order, `batch` rows a query.

        Iterate it for `(seq, event)`; afterwards its counters say what was skipped.
        """
        return EventStream(self, after_seq, until_seq, types, batch, mark_repeats=False)

    def stream_marked(
        self, after_seq: int = 0, *, until_seq: int | None = None, batch: int = 5000
    ) -> EventStream:
        """Like `stream`, and `.marked()` also says whether a completion repeats a stored one."""
        return EventStream(self, after_seq, until_seq, None, batch, mark_repeats=True)

    def earlier_completions(self, test_key: str, before_seq: int) -> list[tuple[int, ev.TestCompleted]]:
        """Stored completions of `test_key` with a smaller `seq` (decodable ones)."""
        rows = self._read(
            "SELECT seq, payload FROM events WHERE test_key = ? AND type = 'test.completed'"
            " AND seq < ? ORDER BY seq",
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
        rows = self._read(
            "SELECT test_key FROM events WHERE type = 'test.completed' AND seq <= ?"
            " GROUP BY test_key HAVING COUNT(*) > 1",
            (until_seq if until_seq is not None else 2**62,),
        )
        return {r[0] for r in rows}

    def raw(
        self,
        *,
        after_seq: int = 0,
        types: Sequence[str] | None = None,
        run_id: str | None = None,
        since: str | None = None,
        batch: int = 5000,
    ) -> Iterator[tuple[int, str, str | None, str]]:
        """Stored rows as they are: (seq, type, model, payload JSON), unknown types included."""
        where = ["seq > ?"]
        params: list[Any] = []
        if types:
            where.append(f"type IN ({', '.join('?' * len(types))})")
            params.extend(types)
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if since is not None:
            where.append("recorded_at >= ?")
            params.append(since)
        sql = (
            f"SELECT seq, type, model, payload FROM events WHERE {' AND '.join(where)}"
            " ORDER BY seq LIMIT ?"
        )
        while True:
            rows = self._read(sql, [after_seq, *params, batch])
            yield from rows
            if len(rows) < batch:
                return
            after_seq = rows[-1][0]

    def last_seq(self) -> int:
        return self._read("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0]

    def count(self) -> int:
        return self._read("SELECT COUNT(*) FROM events")[0][0]

    def has_types_after(self, after_seq: int, until_seq: int, types: Sequence[str]) -> bool:
        """Whether any event of `types` lies in `(after_seq, until_seq]`."""
        marks = ", ".join("?" * len(types))
        rows = self._read(
            f"SELECT seq FROM events WHERE type IN ({marks}) AND seq > ? AND seq <= ? LIMIT 1",
            [*types, after_seq, until_seq],
        )
        return bool(rows)

    def chain_rows(self, after_seq: int = 0, *, batch: int = 5000) -> Iterator[tuple[int, str | None, str]]:
        """(seq, stored hash, payload) by `seq`, for verifying the chain."""
        while True:
            rows = self._read(
                "SELECT seq, hash, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, batch),
            )
            yield from rows
            if len(rows) < batch:
                return
            after_seq = rows[-1][0]

    def chain_head(self, seq: int) -> str | None:
        """The stored hash at `seq` (the genesis value at 0; None if no event has it)."""
        if seq == 0:
            return chain.GENESIS
        rows = self._read("SELECT hash FROM events WHERE seq = ?", (seq,))
        return rows[0][0] if rows else None

    def missing_guards(self) -> list[str]:
        """Names of the immutability triggers that are not in place."""
        rows = self._read(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"
        )
        present = {r[0] for r in rows}
        return [name for name in GUARD_TRIGGERS if name not in present]

    # -- projection state (same file, same transaction as its last seq) --

    def load_projection_state(self, name: str) -> tuple[int, int, str] | None:
        """(version, last_seq, state JSON) saved for projection `name`, if any."""
        rows = self._read(
            "SELECT version, last_seq, state FROM projection_state WHERE name = ?", (name,)
        )
        return tuple(rows[0]) if rows else None  # type: ignore[return-value]

    def save_projection_state(self, name: str, version: int, last_seq: int, state: str) -> bool:
        """Save a state unless one at least as far along is already there (racing projectors)."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT last_seq, version FROM projection_state WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO projection_state (name, version, last_seq, state) VALUES (?, ?, ?, ?)",
                    (name, version, last_seq, state),
                )
            elif row[0] <= last_seq or row[1] != version:
                conn.execute(
                    "UPDATE projection_state SET version = ?, last_seq = ?, state = ? WHERE name = ?",
                    (version, last_seq, state, name),
                )
            else:
                return False
        return True

    # -- lifetime --

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for checks and tests (prefer the methods)."""
        return self._conn


class ImportResult(msgspec.Struct, frozen=True):
    read: int  # JSON lines read (blank lines aside)
    stored: int  # newly stored (the rest were already in the log)
    unknown_types: int  # lines of types this version does not know, stored as they are
