"""results.db, the shell half: one SQLite file of rows for `ultra report` and any SQLite
client, folded from the log (incrementally, or rebuilt into a new file that replaces the
old one); its rows, columns and views are `projections.results_db`'s."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from projections import master_database as mdb
from projections import results_db as rdb
from projections.counting import Counting, current_legacy_cells
from projections.repairs import REPAIR_TYPES, Repairs
from ultra.defaults import DEFAULT_CONDITION
from ultra.events import RunFinished, RunStarted
from ultra.eventlog.store import EventLog
from ultra.projection.completion_index import CompletionIndex

if TYPE_CHECKING:
    import sqlite_utils
from ultra.projection.files import temp_beside
from ultra.projection.reading import gc_paused, log_repairs, other_log, say_rebuilt

RESULTS_NAME = "results.db"
RESULT_ROWS_PER_INSERT = 2_000  # rows held before an executemany: memory stays flat however long the log


def results_path(out: Path | str, results: Path | str | None = None) -> Path:
    """results.db lives beside master_database.json unless named."""
    return Path(results) if results is not None else Path(out).parent / RESULTS_NAME


# ---- results.db ------------------------------------------------------------------------


class ResultsMeta(msgspec.Struct, kw_only=True):
    """results.db's own state: what it has folded (its rows are the rest)."""

    version: int = rdb.VERSION
    last_seq: int = 0
    generated_at: str = ""
    duplicate_completions: int = 0
    retracted_completions: int = 0
    skipped_events: int = 0
    chain_head: str = ""  # the log's hash at last_seq: which history these rows come from
    first_event: str = ""  # the event_id of the log's first event: which log


class ResultsReport(msgspec.Struct, frozen=True):
    events_folded: int
    last_seq: int
    rebuilt: bool


def read_results_meta(conn: sqlite3.Connection) -> ResultsMeta | None:
    """The meta table of an open results.db; None if it is not one."""
    try:
        pairs = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        return msgspec.convert(msgspec.json.decode(pairs["state"]), ResultsMeta)
    except (sqlite3.Error, KeyError, msgspec.DecodeError, msgspec.ValidationError, TypeError):
        return None


def _open_results(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=30.0)


def _new_results(path: Path | str) -> sqlite_utils.Database:
    """sqlite-utils writes the schema; it is imported only when a results.db is built."""
    import sqlite_utils

    return sqlite_utils.Database(sqlite3.connect(path, timeout=30.0))


def _upsert(conn: sqlite3.Connection, table: str, row: dict[str, Any], pk: str) -> None:
    """Insert `row`, or set its columns on the stored row with the same `pk`."""
    cols = list(row)
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c != pk)
    conn.execute(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        f" ON CONFLICT ({pk}) DO " + (f"UPDATE SET {sets}" if sets else "NOTHING"),
        list(row.values()),
    )


def _create_schema(db: sqlite_utils.Database) -> None:
    db["tests"].create(rdb.TEST_COLUMNS, pk="event_id")
    db["errored"].create(rdb.ERRORED_COLUMNS, pk="event_id")
    db["runs"].create(rdb.RUN_COLUMNS, pk="run_id")
    db["aliases"].create({"alias": str, "canonical": str}, pk="alias")
    db["cells"].create(rdb.CELL_COLUMNS, pk=rdb.CELL_KEYS)
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["legacy_cells"].create(rdb.LEGACY_CELL_COLUMNS, pk="event_id")
    db["legacy_imports"].create(rdb.LEGACY_IMPORT_COLUMNS, pk="source")
    db["conditions"].create(rdb.CONDITION_COLUMNS, pk="condition")
    db["conditions"].insert(dict(condition=DEFAULT_CONDITION, label=DEFAULT_CONDITION, fields="{}"))


def _create_indexes_and_views(db: sqlite_utils.Database) -> None:
    for dim in rdb.DIMENSIONS:
        db["tests"].create_index([dim], index_name=f"tests_by_{dim}")
    db["tests"].create_index(["seq"], index_name="tests_by_seq")
    for dim in ("model", "run_id", "seq"):
        db["errored"].create_index([dim], index_name=f"errored_by_{dim}")
    for name, sql in rdb.view_sql(metric_columns(db.conn)).items():
        db.create_view(name, sql)


def metric_columns(conn: sqlite3.Connection) -> rdb.MetricColumns:
    """The suite metrics results.db has columns for (none: no `metrics` table)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'metrics'").fetchone() is None:
        return rdb.MetricColumns()
    return rdb.MetricColumns(conn.execute(  # a table from before declarations: all means
        f"SELECT name, column_name, {'aggregate' if _has_aggregates(conn) else 'NULL'}"
        " FROM metrics ORDER BY position").fetchall())


def _has_aggregates(conn: sqlite3.Connection) -> bool:
    """Whether `metrics` has its `aggregate` column (a table made before declarations lacks it)."""
    return any(r[1] == "aggregate" for r in conn.execute("PRAGMA table_info(metrics)"))


class _Rebuild(Exception):
    """An incremental update cannot give what a fresh fold would: rebuild instead."""


def _add_metric(conn: sqlite3.Connection, extra: rdb.MetricColumns, seq: int, name: str,
                suite: str, folded_up_to: int) -> None:
    """A new metric's column in `tests` (and its row in `metrics`; `extra.add` named it).
    Tests of its suite folded by an earlier update may have had it (a results.db from
    before suite metrics had columns): then only a rebuild fills their column."""
    if folded_up_to and conn.execute("SELECT 1 FROM tests WHERE suite = ? AND seq <= ? LIMIT 1",
                                     (suite, folded_up_to)).fetchone():
        raise _Rebuild(name)
    if len(extra.names) == 1:
        cols = ", ".join(f"{c} {'INTEGER' if t is int else 'TEXT'}"
                         for c, t in rdb.METRIC_COLUMNS.items())
        conn.execute(f"CREATE TABLE metrics ({cols}, PRIMARY KEY (name))")
    else:
        _with_aggregates(conn)
    column = extra.columns[name]
    conn.execute(f"ALTER TABLE tests ADD COLUMN {rdb.quoted(column)} FLOAT")
    conn.execute("INSERT INTO metrics (name, column_name, suite, seq, position, aggregate)"
                 " VALUES (?, ?, ?, ?, ?, ?)",
                 (name, column, suite, seq, len(extra.names) - 1, extra.aggregates.get(name)))


def _with_aggregates(conn: sqlite3.Connection) -> None:
    if not _has_aggregates(conn):
        conn.execute("ALTER TABLE metrics ADD COLUMN aggregate TEXT")


def _fold_results(conn: sqlite3.Connection, log: EventLog, meta: ResultsMeta, until: int,
                  repairs: Repairs) -> int:
    """Append the rows of events in `(meta.last_seq, until]` and advance `meta` (in the
    caller's transaction)."""
    stream = CompletionIndex.of(log).stream_marked(after_seq=meta.last_seq, until_seq=until)
    runs: dict[str, dict] = {}
    conditions: list[dict] = []
    views_stale = False

    def declared(seq: int, e: RunStarted) -> None:
        """A run's metric declarations: a column for each new one (the rows before it are
        all written: this runs between two rows), the aggregate of one a test made."""
        nonlocal views_stale
        for name, aggregate in extra.declared(e):
            views_stale = True
            if name in extra.columns:  # a test carried it undeclared: a mean until now
                _with_aggregates(conn)
                conn.execute("UPDATE metrics SET aggregate = ? WHERE name = ?", (aggregate, name))
                continue
            if buffers["tests"]:
                flush("tests")
            extra.add(name)
            _add_metric(conn, extra, seq, name, e.suite or "", folded_up_to=meta.last_seq)
            inserts["tests"] = tests_insert()

    def items() -> Iterator[mdb.Item]:
        for item in stream.with_earlier():
            e = item[1]
            if type(e) is RunStarted or type(e) is RunFinished:
                runs[e.run_id] = {**runs.get(e.run_id, {}), **rdb.run_update(e)}  # type: ignore[union-attr]
                if type(e) is RunStarted and e.conditions:
                    conditions.extend(rdb.condition_rows(e))
                if type(e) is RunStarted and e.metrics:
                    declared(item[0], e)
            yield item

    counting = Counting(repairs)
    counting.legacy = []
    counting.last_recorded_at = meta.generated_at
    buffers: dict[str, list] = {"tests": [], "errored": []}
    extra = metric_columns(conn)
    known_metrics = len(extra.names)

    def insert_sql(table: str, cols: list[str]) -> str:
        return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"

    def tests_insert() -> str:
        return insert_sql("tests", [*rdb.TEST_COLUMNS,
                                    *(rdb.quoted(extra.columns[n]) for n in extra.names)])

    inserts = {"tests": tests_insert(), "errored": insert_sql("errored", list(rdb.ERRORED_COLUMNS))}

    def flush(table: str) -> None:
        # Rows are tuples of scalars in column order: plain executemany, not sqlite-utils'
        # per-value conversion (which took 2/3 of a full rebuild).
        conn.executemany(inserts[table], buffers[table])
        buffers[table].clear()

    cells: dict[tuple, list] = {}
    with gc_paused():
        for table, row in rdb.rows(counting.events(items()), extra):
            if table == "metric":  # its column first, then the rows that carry it
                if buffers["tests"]:
                    flush("tests")
                _add_metric(conn, extra, *row, folded_up_to=meta.last_seq)
                inserts["tests"] = tests_insert()
                continue
            buf = buffers[table]
            buf.append(row)
            if table == "tests":
                rdb.add_to_cells(cells, row)
            if len(buf) >= RESULT_ROWS_PER_INSERT:
                flush(table)
    for table in buffers:
        if buffers[table]:
            flush(table)
    conn.executemany(rdb.cells_upsert_sql(), [(*k, *v) for k, v in sorted(cells.items())])
    if views_stale or len(extra.names) > known_metrics:  # the views aggregate them too
        for name, sql in rdb.view_sql(extra).items():
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?",
                            (name,)).fetchone():
                conn.execute(f"DROP VIEW {name}")
                conn.execute(f"CREATE VIEW {name} AS {sql}")
    if counting.legacy:
        _fold_legacy_results(conn, counting.legacy, repairs)
    # Plain SQL upserts: the incremental path (one CLI call per run) needs no sqlite-utils.
    for row in runs.values():
        _upsert(conn, "runs", row, "run_id")
    for row in conditions:
        _upsert(conn, "conditions", row, "condition")
    if repairs.aliases:  # the final table: a new alias rebuilds the file, so this is complete
        for a, c in repairs.aliases.items():
            _upsert(conn, "aliases", {"alias": a, "canonical": c}, "alias")
    meta.last_seq = until
    meta.generated_at = counting.last_recorded_at
    meta.duplicate_completions += counting.duplicates
    meta.retracted_completions += counting.retracted
    meta.skipped_events += stream.skipped
    meta.chain_head = log.chain_head(until) or ""
    if until > 0 and not meta.first_event:
        meta.first_event = log.first_event_id()
    _upsert(conn, "meta", {"key": "state", "value": msgspec.json.encode(meta).decode()}, "key")
    return counting.folded


def _fold_legacy_results(conn: sqlite3.Connection, legacy: list, repairs: Repairs) -> None:
    """Legacy imports and cells, in seq order: a new import of a source replaces its rows."""
    from ultra.events import LegacyImported

    current = dict(conn.execute("SELECT source, import_id FROM legacy_imports").fetchall())
    cols = list(rdb.LEGACY_CELL_COLUMNS)
    insert = f"INSERT INTO legacy_cells ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for seq, e in current_legacy_cells(legacy, current):
        if type(e) is LegacyImported:
            conn.execute("DELETE FROM legacy_cells WHERE source = ?", (e.source,))
            _upsert(conn, "legacy_imports", rdb.legacy_import_row(seq, e), "source")
        else:
            conn.execute(insert, rdb.legacy_cell_row(seq, e, repairs.canonical(e.model)))  # type: ignore[union-attr]


def update_results(log: EventLog, path: Path, until: int, *, rebuild: bool = False) -> ResultsReport:
    """Bring results.db up to date with the log up to `until`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rebuild and path.exists():
        conn = None
        try:
            conn = _open_results(path)
            conn.execute("BEGIN IMMEDIATE")  # one projector at a time reads meta and appends
            meta = read_results_meta(conn)
            why = None if meta is None else other_log(log, meta.last_seq, meta.chain_head,
                                                      meta.first_event)
            if why is not None and meta is not None and meta.last_seq > until \
                    and log.chain_head(meta.last_seq) is None:
                why = f"it holds events up to seq {meta.last_seq}; this log ends at {until}"
            if why is not None:
                say_rebuilt(str(path), why, log)
            if (
                why is None and meta is not None and meta.version == rdb.VERSION
                and meta.last_seq <= until
                and not log.has_types_after(meta.last_seq, until, REPAIR_TYPES)
            ):
                try:
                    n = _fold_results(conn, log, meta, until, log_repairs(log, until))
                    conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                return ResultsReport(events_folded=n, last_seq=until, rebuilt=False)
            conn.execute("ROLLBACK")
        except (sqlite3.DatabaseError, _Rebuild):
            pass  # not a results.db we can use (or one an update cannot complete): rebuild it
        finally:
            if conn is not None:
                conn.close()
    return ResultsReport(events_folded=build_results(log, path, until), last_seq=until,
                         rebuilt=True)


def build_results(log: EventLog, path: Path, until: int) -> int:
    """A fresh results.db from zero, built beside `path` and renamed over it."""
    fd, tmp = temp_beside(path)
    os.close(fd)
    try:
        db = _new_results(tmp)
        try:
            db.conn.execute("PRAGMA journal_mode = OFF")  # a new file: nothing to roll back to
            db.conn.execute("PRAGMA synchronous = OFF")  # fsynced once below, before the rename
            with db.atomic():
                _create_schema(db)
                n = _fold_results(db.conn, log, ResultsMeta(), until, log_repairs(log, until))
                _create_indexes_and_views(db)
        finally:
            db.close()
        with open(tmp, "rb+") as fh:
            os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return n


def fresh_results(log: EventLog, until: int) -> sqlite_utils.Database:
    """results.db folded from zero in memory (the audit's reference)."""
    db = _new_results(":memory:")
    with db.atomic():
        _create_schema(db)
        _fold_results(db.conn, log, ResultsMeta(), until, log_repairs(log, until))
    return db


__all__ = ["build_results", "fresh_results", "metric_columns", "read_results_meta", "RESULTS_NAME",
           "results_path", "ResultsMeta", "ResultsReport", "update_results"]
