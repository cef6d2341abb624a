"""The shared event log: PostgreSQL through psycopg 3 (`--db postgresql://…`), one log
that collectors on several machines write to at once.

Appends take a transaction-scoped advisory lock before reading the chain head: one
appender at a time assigns `seq` and the hash, and commits before the next one reads the
head. So `seq` order is commit order, and an incremental projection reading by `seq` never
passes an event that commits later with a lower `seq` (PostgreSQL's own sequences hand out
numbers before commit and would allow exactly that). tools/bench_store.py measures what
the serialization costs. Passwords belong in PGPASSWORD or ~/.pgpass, not in the URL.

A lost connection (the server restarted or unreachable: an error without SQLSTATE, class
08, or an admin/crash shutdown) is reopened with exponential backoff (0.1 s doubling to
RECONNECT_MAX_DELAY) under the log's lock, so threads sharing the log wait for one
reconnect; past `retry_seconds` from the first loss the call raises `StoreLost`.

A collector stopped inside a transaction (SIGSTOP, a suspended VM) would hold the append
lock, and every other collector with it, for as long as it stays stopped. Each session
therefore sets `idle_in_transaction_session_timeout` (STALL_SECONDS): the server ends a
session whose transaction sits idle that long, which rolls it back and frees the lock. Our
own transactions send their statements back to back; one that was ended this way counts as
a lost connection, is reconnected and runs again (a stalled collector's lease has expired
by then, and fencing drops what it would have stored).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from ultra.errors import UserError
from ultra.errors import StoreLost, storage_error
from ultra.eventlog.store import _COLUMNS, EventLog
from ultra.eventlog.locations import MIGRATIONS_TABLE
from ultra.eventlog.store_tx import patient as _patient

APPEND_LOCK = 0x756C747261  # "ultra": the advisory lock key that serializes appends
RECONNECT_MAX_DELAY = 4.0  # seconds between reconnection attempts, at most
CONNECT_TIMEOUT = 10  # seconds for one connection attempt (libpq's least is 2)
STALL_SECONDS = 5  # a transaction idle this long (its collector stopped) is ended by the server
# admin shutdown, crash shutdown, cannot connect now; the server ended an idle transaction
_LOST_STATES = ("57P01", "57P02", "57P03", "25P03")


@functools.lru_cache(maxsize=256)
def _dialect(sql: str) -> str:
    """The interface's SQL uses `?` placeholders; psycopg's are `%s`."""
    return sql.replace("?", "%s")


def _reason(exc: BaseException, line: int = 0) -> str:
    """One line of libpq's message (the first says what failed; the last, a hint)."""
    text = str(exc).strip()
    return text.splitlines()[line].strip() if text else type(exc).__name__


def _is_loss(exc: BaseException) -> bool:
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in _LOST_STATES


def _session(url: str, connect_timeout: int) -> Any:
    """A connection in autocommit whose idle transactions the server ends (STALL_SECONDS)."""
    conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
    conn.execute(f"SET idle_in_transaction_session_timeout = {STALL_SECONDS * 1000}")
    return conn


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict
        info = conninfo_to_dict(url)
    except Exception:
        return "postgresql://…"
    host, db = info.get("host", ""), info.get("dbname", "")
    port = f":{info['port']}" if info.get("port") else ""
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}{port}/{db}"


class _Tx:
    """A psycopg cursor inside one transaction, speaking the interface's placeholders."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        return self.cur.execute(_dialect(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        return self.cur.executemany(_dialect(sql), rows)


class PostgresLog(EventLog):
    dialect = "postgresql"
    # The server's clock: collectors on several machines agree on it whatever their own say.
    clock_sql = "(EXTRACT(EPOCH FROM clock_timestamp())::double precision)"
    conflict_errors = (psycopg.errors.UniqueViolation,)
    lock_rows_sql = " FOR UPDATE"  # a claim taken over waits for, or is seen by, the append
    check_first = False  # insert optimistically under a savepoint: one round trip less
    guards = ("events_no_update", "events_no_delete", "events_no_truncate")
    guards_sql = ("SELECT tgname FROM pg_trigger WHERE tgrelid = 'events'::regclass"
                  " AND NOT tgisinternal AND tgenabled <> 'D'")

    # also "the connection is closed", and a session the server ended for idling in a transaction
    lost_errors = (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout)

    def __init__(self, conn: Any, location: str, url: str) -> None:
        self._conn = conn
        self.location = location
        self._url = url
        self._lock = threading.RLock()
        self._lost_at: float | None = None  # when the connection was lost (one deadline for all)

    @classmethod
    def connect(cls, url: str, *, create: bool = True) -> PostgresLog:
        where = redacted(url)
        try:
            conn = _session(url, CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise UserError(f"{where}: cannot connect to the event log ({_reason(exc, -1)})") from None
        return cls(conn, where, url)._prepared(
            create, psycopg.Error,
            lambda exc: f"{where}: not a usable event log ({str(exc).strip().splitlines()[0]})")

    def _prepare(self, create: bool) -> None:
        tables = {r[0] for r in self._read(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
        if not tables and not create:
            raise UserError(f"{self.location}: no event log there (an empty database)")
        if MIGRATIONS_TABLE not in tables and tables:
            raise UserError(f"{self.location}: a PostgreSQL database, but not an ultra event log")
        if MIGRATIONS_TABLE in tables and not self._pending_migrations():
            return
        with self._transaction() as tx:
            self._lock_appends(tx)  # racing openers apply each migration once
            self._migrate(tx)

    def _wait_for_server(self, exc: Exception) -> None:
        if not _is_loss(exc):
            raise storage_error(self.location, exc) or exc
        with self._lock:
            if not self._conn.closed:
                return  # another thread reconnected meanwhile
            if self._lost_at is None:
                self._lost_at = time.monotonic()
            deadline = self._lost_at + self.retry_seconds
            delay, reason = 0.1, _reason(exc)
            while True:
                left = deadline - time.monotonic()
                if left > 0:
                    try:
                        conn = _session(self._url, max(2, min(CONNECT_TIMEOUT, int(left))))
                        break
                    except psycopg.Error as again:
                        reason = _reason(again)
                    left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreLost(f"lost the event log {self.location} (out of reach for"
                                    f" {self.retry_seconds:g} s: {reason})") from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
            self._conn.close()
            self._conn, self._lost_at = conn, None

    def _run_script(self, tx: Any, sql: str) -> None:
        tx.cur.execute(sql)  # no parameters: the script runs as written (functions, $$)

    @contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            yield _Tx(cur)

    def _lock_appends(self, tx: Any) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (APPEND_LOCK,))

    def _insert_rows(self, tx: Any, rows: list[tuple[Any, ...]]) -> None:
        with tx.cur.copy(f"COPY events ({_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _insert_transcripts(self, tx: Any, rows: list[tuple[int, str, bytes]]) -> None:
        with tx.cur.copy("COPY transcripts (seq, digest, data) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    @_patient
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock, self._conn.cursor() as cur:
            cur.execute(_dialect(sql), params or None)
            return cur.fetchall()


__all__ = ["APPEND_LOCK", "CONNECT_TIMEOUT", "PostgresLog", "RECONNECT_MAX_DELAY", "redacted",
           "STALL_SECONDS"]
