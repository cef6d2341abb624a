"""The shared event log: PostgreSQL through psycopg 3 (`--db postgresql://…`), one log
that collectors on several machines write to at once.

Appends take a transaction-scoped advisory lock before reading the chain head: one
appender at a time assigns `seq` and the hash, and commits before the next one reads the
head. So `seq` order is commit order, and an incremental projection reading by `seq` never
passes an event that commits later with a lower `seq` (PostgreSQL's own sequences hand out
numbers before commit and would allow exactly that). tools/bench_store.py measures what
the serialization costs. Passwords belong in PGPASSWORD or ~/.pgpass, not in the URL.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from ultra.errors import UserError
from ultra.store import _COLUMNS, MIGRATIONS_TABLE, EventLog

APPEND_LOCK = 0x756C747261  # "ultra": the advisory lock key that serializes appends


@functools.lru_cache(maxsize=256)
def _dialect(sql: str) -> str:
    """The interface's SQL uses `?` placeholders; psycopg's are `%s`."""
    return sql.replace("?", "%s")


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

    def __init__(self, conn: Any, location: str) -> None:
        self._conn = conn
        self.location = location
        self._lock = threading.RLock()

    @classmethod
    def connect(cls, url: str, *, create: bool = True) -> PostgresLog:
        where = redacted(url)
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{where}: cannot connect to the event log ({reason})") from None
        return cls(conn, where)._prepared(
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

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock, self._conn.cursor() as cur:
            cur.execute(_dialect(sql), params or None)
            return cur.fetchall()
