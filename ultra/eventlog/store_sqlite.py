"""The embedded event log: one SQLite file in WAL mode (`--db PATH`, the default).

Many writer processes append at once: each batch is one `BEGIN IMMEDIATE` transaction,
retried with backoff while another writer holds the lock, so "database is locked" never
reaches a user.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ultra.eventlog import chain
from ultra.defaults import LOG_CACHE_MIB
from ultra.errors import StoreBusy, UserError, storage_error
from ultra.eventlog.store import EventLog
from ultra.eventlog.locations import MIGRATIONS_TABLE

BUSY_TIMEOUT_S = 5.0  # SQLite's own wait for a lock, per attempt
LOCK_PATIENCE_S = 600.0  # total time a writer keeps retrying before giving up
# Under many busy writers SQLite's passive checkpoints never find a moment to restart the
# WAL, which then grows without bound (8 GB for 1M events with 4 writers): past this size a
# writer forces a checkpoint that waits for the others, and truncates the WAL.
WAL_TRUNCATE_BYTES = 64 * 2**20
WAL_AUTOCHECKPOINT_PAGES = 10_000
_SQLITE_MAGIC = b"SQLite format 3\x00"


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


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class SqliteLog(EventLog):
    dialect = "sqlite"
    clock_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    conflict_errors = (sqlite3.IntegrityError,)
    guards = ("events_no_update", "events_no_delete", "events_no_overwrite")
    guards_sql = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self.location = str(path)
        self._wal_path = f"{path}-wal"
        self._lock = threading.RLock()

    @classmethod
    def open_file(cls, path: Path, *, create: bool = True) -> SqliteLog:
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
                raise UserError(f"{path}: empty file, no event log there (yet: a run may be"
                                " creating it)")
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
        return cls(conn, path)._prepared(
            create, sqlite3.DatabaseError,
            lambda exc: storage_error(path, exc) or UserError(f"{path}: not a usable SQLite database ({exc})"))

    def _prepare(self, create: bool) -> None:
        conn = self._conn
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and not create:  # what a run creating the log shows before it commits
            raise UserError(f"{self.path}: an empty SQLite database, no event log there (yet: a"
                            " run may be creating it)")
        if MIGRATIONS_TABLE not in tables and tables:
            raise UserError(f"{self.path}: an SQLite database, but not an ultra event log")
        self._retrying(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
        # NORMAL is durable against process crashes in WAL mode; only power loss may lose
        # the last commits, never tear one.
        conn.execute("PRAGMA synchronous = NORMAL")
        # bounded: it fills up to this and stays (a sequential replay needs few pages; new
        # event ids sort last, so appends touch the index's right edge)
        conn.execute(f"PRAGMA cache_size = {-1024 * LOG_CACHE_MIB}")
        # Checkpoint every ~40 MB of WAL rather than 4 MB: fewer stalls in the appender that
        # hits the threshold (tools/bench_store.py: 1.3-1.9x appends at 200k events).
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        if MIGRATIONS_TABLE in tables and not self._pending_migrations():
            return  # nothing to write: read-only files stay readable
        with self._transaction() as tx:
            self._migrate(tx)  # under the write lock: racing openers apply each once

    def _run_script(self, tx: Any, sql: str) -> None:
        for stmt in _statements(sql):
            tx.execute(stmt)

    def _after_migration(self, tx: Any, version: int) -> None:
        if version == 3:
            _chain_existing(tx)

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
                    raise self._problem(exc) from None
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"{self.path}: event log busy for {LOCK_PATIENCE_S:.0f} s; is a writer stuck?"
                    ) from None
                import random  # only a writer that waits jitters: kept out of every start

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
                self._retrying(lambda: conn.execute("COMMIT"))
            except BaseException as exc:  # a failed COMMIT (a full disk) too: never left open
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError):
                    raise self._problem(exc) from None
                raise

    def _problem(self, exc: sqlite3.DatabaseError) -> Exception:
        """A read-only, full or corrupted file as one line for the user; else `exc`."""
        return storage_error(self.path, exc) or exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._retrying(lambda: self._conn.execute(sql, params).fetchall())
            except sqlite3.DatabaseError as exc:  # not busy: a corrupted page, say
                raise self._problem(exc) from None

    def _after_append(self) -> None:
        self._bound_wal()

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


__all__ = ["BUSY_TIMEOUT_S", "LOCK_PATIENCE_S", "SqliteLog", "WAL_AUTOCHECKPOINT_PAGES",
           "WAL_TRUNCATE_BYTES"]
