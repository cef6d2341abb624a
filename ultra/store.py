"""The event log: one append-only table of events ordered by `seq`, behind one interface
with two implementations chosen by `--db`: a path is SQLite (`ultra/store_sqlite.py`, the
embedded default), `postgresql://…` is PostgreSQL (`ultra/store_postgres.py`), one log
shared by collectors on several machines.

Same semantics on both: migrations in plain SQL per dialect (`migrations/<dialect>/`),
idempotent append by `event_id`, immutable rows (triggers), the hash chain (ultra/chain.py)
computed inside the write transaction, streaming reads by `seq`, projection state saved
with its last `seq` in one transaction, the completion index (derived from the events and
checked against them: `CompletionIndex` in ultra/completion_index.py) and leases (a table
of their own: `LeaseTable` in ultra/lease_table.py).
Appends are serialized (SQLite's write lock; a PostgreSQL advisory lock): the chain needs
the previous hash, and `seq` is assigned under the lock, so an event with a lower `seq`
never commits after a reader has passed it. The store knows the event schema and nothing
above it (resume and repairs live in the shells that plan and project).

When the log is lost (a PostgreSQL server restarted, a network cut), every call that
writes or reads waits for it and retries: a dialect names its connection-lost errors
(`lost_errors`) and reconnects (`_wait_for_server`) with backoff, all threads of one log
sharing one deadline, `retry_seconds` (STORE_TIMEOUT, `ultra run --store-timeout`) after the
loss; then `StoreLost`. A retried write is safe: appends are idempotent by `event_id`, and
a lease call sets what it sets again.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import msgspec

from ultra import chain
from ultra import events as ev
from ultra.errors import ImportConflict, UserError
from ultra.completion_index import (  # noqa: F401  (the queries: tests pin their plans)
    COMPLETIONS_OF_QUERY,
    EARLIER_COMPLETION,
    REPEATED_KEYS_QUERY,
    REPEATED_SEQS_QUERY,
    REPEATS_AFTER_QUERY,
    RESUME_QUERY,
    CompletionIndex,
)
from ultra.lease_table import TEST_LEASE_PREFIX, LeaseTable, release_in
from ultra.store_tx import Tx
from ultra.store_tx import patient as _patient

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

MIGRATIONS_TABLE = "ultra_migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[\w.-]+\.sql$")
SERVER_SCHEMES = ("postgresql://", "postgres://")

# Rows arrive here already free of stored event ids, with seq and hash assigned under the
# write lock; the triggers refuse anything else.
_COLUMNS = "seq, event_id, type, recorded_at, test_key, model, run_id, payload, hash"
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_TAGS: dict[type, str] = {cls: tag for tag, cls in ev.EVENT_TYPES.items()}
_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()

Row = tuple[str, str, str, str | None, str | None, str | None, str]
IMPORT_LINE_LIMIT = 16 * 2**20  # bytes: an event line is a few KB; anything near this is not one
STORE_TIMEOUT = 60.0  # seconds a lost connection to the log is retried before giving up
READ_BATCH = 1000  # events a read asks for at a time: ~1.6 MB of rows held, however long the log



def is_server_url(db: str | Path) -> bool:
    return isinstance(db, str) and db.startswith(SERVER_SCHEMES)


def db_location(text: str | Path) -> Path | str:
    """What `--db` names: a server URL stays a string (a Path would fold its `//`)."""
    return text if is_server_url(text) else Path(text)


# ---- migrations ----------------------------------------------------------------------


def migrations_dir(dialect: str = "sqlite") -> Traversable:
    """`ultra/_migrations/<dialect>` in an installed wheel, else the repo's `migrations/`.

    Both are plain directories; importlib.resources (which imports zipfile: ~3 ms of every
    command's start) is asked only when neither is, as in a zipped install.
    """
    here = Path(__file__).resolve().parent
    for root in (here / "_migrations", here.parent / "migrations"):
        if root.is_dir():
            return root / dialect
    import importlib.resources

    return importlib.resources.files("ultra") / "_migrations" / dialect


def load_migrations(dialect: str = "sqlite") -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every `NNNN_*.sql` of `dialect`, in order."""
    found = []
    for entry in migrations_dir(dialect).iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if not found or len(set(versions)) != len(versions):
        raise RuntimeError(f"broken migrations directory: {versions}")
    return found


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
    """`columns` of the stored events among `ids` (500 ids a query)."""
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        yield from tx.execute(
            f"SELECT {columns} FROM events WHERE event_id IN ({', '.join('?' * len(part))})", part
        ).fetchall()


def _same_event(a: str, b: str) -> bool:
    """Same JSON content (key order aside)."""
    return a == b or _any_decoder.decode(a) == _any_decoder.decode(b)


# ---- the completion index's digest ----------------------------------------------------
# completion_keys is derived from the log; its state (projection_state 'completion_keys',
# version INDEX_VERSION) records, with the last indexed seq, aggregates of its rows added
# up as they were indexed: count, sum and greatest seq, total test-key and event-id length.
# Deleted rows change the count and sums, edited keys their length: found by one scan.

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
        # Duplicate detection reads completion_keys, brought up to the stream's end first,
        # for the seqs of the completions that may repeat an earlier one (usually none), so
        # the stream itself reads what a bare read does. A replay from zero asks for every
        # completion of a key completed more than once (an ordered scan of that table: no
        # sort, no memory that grows with the log); an incremental run probes its new rows.
        # Only those seqs get a probe with `earlier_completions`.
        self._repeats: set[int] | None = None
        if mark_repeats:
            if self._until is None:
                self._until = log.last_seq()
            log.index_completions(self._until)
            if after_seq == 0:
                rows = log._read(REPEATED_SEQS_QUERY, (self._until, self._until))
            else:
                rows = log._read(REPEATS_AFTER_QUERY, (after_seq, self._until))
            self._repeats = {r[0] for r in rows}
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
                    yield seq, event, [e for _, e in self._log.earlier_completions(event.test_key, seq)]
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


# ---- the log ---------------------------------------------------------------------------


class EventLog(CompletionIndex, LeaseTable):
    """An open event log (the store interface). Thread-safe, usable from trio worker
    threads. `EventLog.open(db)` picks the implementation from `db`."""

    dialect: ClassVar[str]
    clock_sql: ClassVar[str]  # the store's clock in SQL, seconds since the epoch (leases)
    conflict_errors: ClassVar[tuple[type[Exception], ...]]  # an insert on a stored id
    check_first: ClassVar[bool] = True  # look up stored event ids before inserting a batch
    guards: ClassVar[tuple[str, ...]]  # the immutability triggers `missing_guards` checks
    guards_sql: ClassVar[str]  # names the events table's enabled triggers
    _conn: Any  # the implementation's connection, used under `_lock`
    _lock: threading.RLock
    location: str  # what messages call this log (never a password)
    lock_rows_sql: ClassVar[str] = ""  # locks the rows a SELECT read (SQLite: the write lock did)
    lost_errors: ClassVar[tuple[type[Exception], ...]] = ()  # the connection may be lost: retry
    retry_seconds: float = STORE_TIMEOUT  # how long a lost log is waited for

    @classmethod
    def open(cls, db: Path | str, *, create: bool = True) -> EventLog:
        """Open (and if `create`, create) the log at `db`, applying pending migrations.

        Anything that is not a usable ultra event log raises `UserError` with one line.
        """
        if is_server_url(db):
            from ultra.store_postgres import PostgresLog

            return PostgresLog.connect(str(db), create=create)
        from ultra.store_sqlite import SqliteLog

        return SqliteLog.open_file(Path(db), create=create)

    # -- what each implementation provides --

    def _prepare(self, create: bool) -> None:
        """Check the schema, and with `create` make or migrate it."""
        raise NotImplementedError

    def _wait_for_server(self, exc: Exception) -> None:
        """After one of `lost_errors`: return once the call may be tried again (reconnected),
        raise `StoreLost` once `retry_seconds` have passed, or `exc` if it was no loss."""
        raise exc

    def _prepared(self, create: bool, refused: type[Exception],
                  problem: Callable[[Exception], UserError]) -> Self:
        """This log once `_prepare`d, or closed: a `refused` error (the driver's) becomes
        one line, `problem(exc)`; anything else propagates."""
        try:
            self._prepare(create)
        except refused as exc:
            self.close()
            raise problem(exc) from None
        except BaseException:
            self.close()
            raise
        return self

    def _transaction(self) -> AbstractContextManager[Tx]:
        """One write transaction (all or nothing)."""
        raise NotImplementedError

    def _lock_appends(self, tx: Tx) -> None:
        """Serialize appenders inside `tx` until it ends (SQLite: BEGIN IMMEDIATE did)."""

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _insert_rows(self, tx: Tx, rows: list[tuple[Any, ...]]) -> None:
        tx.executemany(_INSERT, rows)

    def _insert_transcripts(self, tx: Tx, rows: list[tuple[int, str, bytes]]) -> None:
        """Store (seq, digest, compressed bytes) rows, in seq order."""
        tx.executemany("INSERT INTO transcripts (seq, digest, data) VALUES (?, ?, ?)", rows)

    def _after_append(self) -> None:
        """Housekeeping outside the transaction (SQLite bounds its WAL)."""

    def _run_script(self, tx: Tx, sql: str) -> None:
        raise NotImplementedError

    def _after_migration(self, tx: Tx, version: int) -> None:
        """A dialect's one-off data step after a migration (SQLite chains old logs)."""

    def missing_guards(self) -> list[str]:
        """Names of the immutability triggers that are not in place (or not enabled)."""
        present = {r[0] for r in self._read(self.guards_sql)}
        return [name for name in self.guards if name not in present]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @property
    def connection(self) -> Any:
        """The raw connection, for checks and tests (prefer the methods)."""
        return self._conn

    # -- migrations --

    def _migrate(self, tx: Tx) -> None:
        """Apply the dialect's pending migrations in `tx`, recording each."""
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        applied = {r[0] for r in tx.execute(f"SELECT version FROM {MIGRATIONS_TABLE}").fetchall()}
        for version, name, sql in load_migrations(self.dialect):
            if version in applied:
                continue
            self._run_script(tx, sql)
            self._after_migration(tx, version)
            tx.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, ev.utc_now()),
            )

    def _pending_migrations(self) -> bool:
        applied = {r[0] for r in self._read(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        return any(v not in applied for v, _, _ in load_migrations(self.dialect))

    # -- writing --

    def append(self, events: Iterable[ev.Event], *, holder: str | None = None,
               release: Sequence[str] = (), done: Mapping[str, str] | None = None,
               transcripts: Mapping[str, tuple[str, bytes]] | None = None) -> int:
        """Append a batch in one transaction; returns how many were new (by `event_id`).

        The claims of the tests these events finish change in the same transaction, so a
        finished test is always either claimed or stored: `release` names leases of
        `holder` to drop (an errored test, to be taken again); `done` maps a lease to the
        `event_id` that completed its test, and the lease stays as a marker of that event's
        seq (see `claim`). With `holder`, test events are fenced (see `append_held`).
        `transcripts` maps an event id to its transcript (digest, compressed bytes): stored
        in the same transaction, for the events actually stored.
        """
        return self.append_held(events, holder=holder, release=release, done=done,
                                transcripts=transcripts).stored

    @_patient
    def append_held(self, events: Iterable[ev.Event], *, holder: str | None = None,
                    release: Sequence[str] = (), done: Mapping[str, str] | None = None,
                    transcripts: Mapping[str, tuple[str, bytes]] | None = None
                    ) -> AppendResult:
        """`append`, fenced: with `holder`, a test's event is stored only while `holder`
        still holds that test's claim, checked under the lock of the very transaction that
        stores it (PostgreSQL: the claim row is locked `FOR UPDATE`, so a takeover waits
        for this commit or this check sees it). A collector that stalled past its lease
        and lost the claim to another has its events for that test dropped (`fenced`), so
        no test completes twice."""
        events = list(events)
        if not events and not release and not done:
            return AppendResult(stored=0)
        with self._transaction() as tx:
            fenced: list[str] = []
            if holder is not None:
                keys = {e.test_key for e in events if isinstance(e, ev._TestEvent)}
                if keys:
                    self._lock_appends(tx)  # the append lock first, then claim rows: one order
                    held = self._held_claims(tx, holder, keys)
                    fenced = sorted(keys - held)
                    if fenced:
                        lost = set(fenced)
                        dropped = [e for e in events
                                   if isinstance(e, ev._TestEvent) and e.test_key in lost]
                        # A batch tried again after its commit's answer was lost: stored, and
                        # its claims are marks now. Not fenced.
                        again = {r[0] for r in _stored(tx, [e.event_id for e in dropped], "event_id")}
                        fenced = sorted(lost - {e.test_key for e in dropped if e.event_id in again})
                        events = [e for e in events
                                  if not (isinstance(e, ev._TestEvent) and e.test_key in lost)]
            rows = [event_row(e) for e in events]
            seqs = self._insert(tx, rows) if rows else {}
            if transcripts and seqs:  # only those of events stored now (not fenced, not known)
                kept = [(seqs[e], d, b) for e, (d, b) in transcripts.items() if e in seqs]
                if kept:
                    self._insert_transcripts(tx, kept)
            if holder is not None and (release or done):
                release_in(tx, [*release, *(n for n, e in (done or {}).items() if e not in seqs)], holder)
                marks = [(seqs[e], name, holder) for name, e in (done or {}).items() if e in seqs]
                if marks:
                    tx.executemany(
                        "UPDATE leases SET done_seq = ? WHERE name = ? AND holder = ?", marks)
        self._after_append()
        return AppendResult(stored=len(seqs), fenced=tuple(fenced))

    def _held_claims(self, tx: Tx, holder: str, keys: set[str]) -> set[str]:
        """The test keys among `keys` whose claim `holder` holds (and has not completed)."""
        names = [f"{TEST_LEASE_PREFIX}{k}" for k in keys]
        held: set[str] = set()
        for i in range(0, len(names), 500):
            part = names[i:i + 500]
            held.update(r[0] for r in tx.execute(
                "SELECT name FROM leases WHERE holder = ? AND done_seq IS NULL"
                f" AND name IN ({', '.join('?' * len(part))}){self.lock_rows_sql}",
                [holder, *part]).fetchall())
        return {n[len(TEST_LEASE_PREFIX):] for n in held}

    def _insert(self, tx: Tx, rows: list[Row], *, checked: bool | None = None) -> dict[str, int]:
        """Store the rows whose event ids are new, chained after the current head; under
        the append lock, so seq and hash are assigned by one writer at a time. Returns the
        seq of each newly stored event id.

        Where a savepoint is cheap (`check_first` False: PostgreSQL), a batch is first
        inserted as it is, since fresh event ids almost never collide; the unique index
        refuses a stored id, and then the batch goes again, `checked` against the stored
        ids first. SQLite checks first: its savepoint journal wrote 6x the bytes per event.
        """
        if checked is None:
            checked = self.check_first
        self._lock_appends(tx)
        fresh: dict[str, Row] = {}
        for row in rows:
            fresh.setdefault(row[0], row)
        for (event_id,) in _stored(tx, list(fresh) if checked else [], "event_id"):
            del fresh[event_id]
        if not fresh:
            return {}
        head = tx.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = head if head else (0, chain.GENESIS)
        out = []
        link = chain.link
        for row in fresh.values():
            seq += 1
            prev = link(prev, seq, row[6])
            out.append((seq, *row, prev))
        if checked:
            self._insert_rows(tx, out)
            return {r[1]: r[0] for r in out}
        tx.execute("SAVEPOINT ultra_insert")
        try:
            self._insert_rows(tx, out)
        except self.conflict_errors:
            tx.execute("ROLLBACK TO SAVEPOINT ultra_insert")
            tx.execute("RELEASE SAVEPOINT ultra_insert")
            return self._insert(tx, rows, checked=True)
        tx.execute("RELEASE SAVEPOINT ultra_insert")
        return {r[1]: r[0] for r in out}

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

    # -- reading --

    def stream(
        self,
        after_seq: int = 0,
        *,
        until_seq: int | None = None,
        types: Sequence[str] | None = None,
        batch: int = READ_BATCH,
    ) -> EventStream:
        """Events with `after_seq < seq <= until_seq`, in `seq` order, `batch` rows a query.

        Iterate it for `(seq, event)`; afterwards its counters say what was skipped.
        """
        return EventStream(self, after_seq, until_seq, types, batch, mark_repeats=False)

    def stream_marked(
        self, after_seq: int = 0, *, until_seq: int | None = None, batch: int = READ_BATCH
    ) -> EventStream:
        """Like `stream`, and `.marked()` also says whether a completion repeats a stored one."""
        return EventStream(self, after_seq, until_seq, None, batch, mark_repeats=True)

    def raw(
        self,
        *,
        after_seq: int = 0,
        types: Sequence[str] | None = None,
        run_id: str | None = None,
        since: str | None = None,
        batch: int = READ_BATCH,
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

    # -- transcripts (rows keyed by their event's seq; ultra/transcripts.py) --

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

    def first_event_id(self) -> str:
        """The event_id of the log's first event ("" when it has none): with the chain head at
        a seq, what tells a projection which log it was folded from."""
        rows = self._read("SELECT event_id FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (0,))
        return rows[0][0] if rows else ""

    # -- projection state (same file, same transaction as its last seq) --

    def load_projection_state(self, name: str) -> tuple[int, int, str] | None:
        """(version, last_seq, state JSON) saved for projection `name`, if any."""
        rows = self._read(
            "SELECT version, last_seq, state FROM projection_state WHERE name = ?", (name,)
        )
        return tuple(rows[0]) if rows else None  # type: ignore[return-value]

    @_patient
    def save_projection_state(self, name: str, version: int, last_seq: int, state: str) -> bool:
        """Save a state unless one at least as far along is already there (racing projectors)."""
        with self._transaction() as tx:
            self._lock_appends(tx)  # racing projectors: one saves at a time
            row = tx.execute(
                "SELECT last_seq, version FROM projection_state WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                tx.execute(
                    "INSERT INTO projection_state (name, version, last_seq, state) VALUES (?, ?, ?, ?)",
                    (name, version, last_seq, state),
                )
            elif row[0] <= last_seq or row[1] != version:
                tx.execute(
                    "UPDATE projection_state SET version = ?, last_seq = ?, state = ? WHERE name = ?",
                    (version, last_seq, state, name),
                )
            else:
                return False
        return True

    # -- lifetime --

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AppendResult(msgspec.Struct, frozen=True):
    stored: int  # newly stored events (the rest were already in the log)
    fenced: tuple[str, ...] = ()  # test keys whose events were dropped: their claim was lost


class ImportResult(msgspec.Struct, frozen=True):
    read: int  # JSON lines read (blank lines aside)
    stored: int  # newly stored (the rest were already in the log)
    unknown_types: int  # lines of types this version does not know, stored as they are
    transcripts: int = 0  # transcripts stored with the newly stored events


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


__all__ = ["AppendResult", "db_location", "event_row", "EventLog", "EventStream",
           "IMPORT_LINE_LIMIT", "ImportResult", "is_server_url", "load_migrations",
           "migrations_dir", "MIGRATIONS_TABLE", "raw_row", "Row", "SERVER_SCHEMES",
           "STORE_TIMEOUT", "transcript_ref"]
