"""The event log: one append-only table of events ordered by `seq`, behind one interface
with two implementations chosen by `--db`: a path is SQLite (`store_sqlite.py`, the
embedded default), `postgresql://…` is PostgreSQL (`store_postgres.py`), one log shared by
collectors on several machines.

Same semantics on both: migrations in plain SQL per dialect (`migrations/<dialect>/`),
idempotent append by `event_id`, immutable rows (triggers), the hash chain (`chain.py`)
computed inside the write transaction, streaming reads by `seq` (`event_stream.py`), rows
made and checked by `event_rows.py`, `ultra import` (`importing.py`), transcripts
(`transcript_table.py`) and leases (`lease_table.py`), all in ultra/eventlog/. Derived
tables in the same database (the completion index with duplicate detection, projection
state: ultra/projection/) are the projection side's: the log gives them `read` and a
transaction under its append lock (`locked`), and never reads or trusts them itself.
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

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Self

import msgspec

from ultra.eventlog import chain
from ultra import events as ev
from ultra.errors import UserError
from ultra.eventlog.event_rows import Row, _stored, event_row
from ultra.eventlog.event_stream import READ_BATCH, EventStream
from ultra.eventlog.locations import (MIGRATIONS_TABLE, is_server_url,
                                      load_migrations)
from ultra.eventlog.importing import ImportResult, RawImport
from ultra.eventlog.transcript_table import TranscriptTable
from ultra.eventlog.lease_table import LeaseTable, release_in
from ultra.eventlog.store_tx import Tx
from ultra.eventlog.store_tx import patient as _patient


# Rows arrive here already free of stored event ids, with seq and hash assigned under the
# write lock; the triggers refuse anything else.
_COLUMNS = "seq, event_id, type, recorded_at, test_key, model, run_id, payload, hash"
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"

STORE_TIMEOUT = 60.0  # seconds a lost connection to the log is retried before giving up


# ---- the log ---------------------------------------------------------------------------


class EventLog(LeaseTable, TranscriptTable, RawImport):
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
            from ultra.eventlog.store_postgres import PostgresLog

            return PostgresLog.connect(str(db), create=create)
        from ultra.eventlog.store_sqlite import SqliteLog

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

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read-only statement (for the derived tables kept beside the log:
        the completion index, projection state)."""
        return self._read(sql, params)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Tx]:
        """One write transaction holding the append lock: no event is appended meanwhile
        (what a derived table is brought up to date in)."""
        with self._transaction() as tx:
            self._lock_appends(tx)
            yield tx

    def _insert_rows(self, tx: Tx, rows: list[tuple[Any, ...]]) -> None:
        tx.executemany(_INSERT, rows)

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
        return EventStream(self, after_seq, until_seq, types, batch)

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

    def first_event_id(self) -> str:
        """The event_id of the log's first event ("" when it has none): with the chain head at
        a seq, what tells a projection which log it was folded from."""
        rows = self._read("SELECT event_id FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (0,))
        return rows[0][0] if rows else ""

    # -- lifetime --

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AppendResult(msgspec.Struct, frozen=True):
    stored: int  # newly stored events (the rest were already in the log)
    fenced: tuple[str, ...] = ()  # test keys whose events were dropped: their claim was lost


__all__ = ["AppendResult", "EventLog", "ImportResult", "STORE_TIMEOUT"]
