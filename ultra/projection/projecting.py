"""The imperative shell of projection: read the log, fold, save state, write the files.

`project` keeps two projections in step: master_database.json and results.db. Each folds
only the events after the `seq` it last folded, unless new repairs (`alias.defined`,
`tests.retracted`) arrived: those apply retroactively, so it replays from zero. The JSON's
state and its last `seq` are saved in one transaction, then the file is written
atomically; results.db holds its rows and its last `seq` in one SQLite transaction, and a
replay builds a new file that replaces the old one. A crash anywhere leaves either the old
or the new projection, never a mix.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from projections import master_database as mdb
from projections import results_db as rdb
from projections.counting import Counting, current_legacy_cells
from projections.repairs import REPAIR_TYPES, Repairs, collect_repairs
from ultra.defaults import DEFAULT_CONDITION
from ultra.errors import UserError
from ultra.events import RunFinished, RunStarted
from ultra.eventlog.event_stream import EventStream
from ultra.eventlog.store import EventLog
from ultra.projection.completion_index import CompletionIndex
from ultra.projection.projection_state import load_projection_state, save_projection_state

if TYPE_CHECKING:
    import sqlite_utils

PROJECTION_NAME = "master_database"
RENDER_MEMO_NAME = "master_database.file"  # what the last render wrote (mdb.RenderMemo)
RENDER_MEMO_VERSION = 2
RESULTS_NAME = "results.db"
RESULT_ROWS_PER_INSERT = 2_000  # rows held before an executemany: memory stays flat however long the log


class ProjectReport(msgspec.Struct, frozen=True):
    events_folded: int  # events decoded and folded in this run
    last_seq: int  # the projection now reflects every event up to here
    rebuilt: bool  # replayed from zero (asked for, new repairs, or no usable saved state)
    skipped_unknown: int  # rows of unknown types in this run (a newer writer's)
    undecodable: int  # rows of known types that did not decode, in this run
    out: str
    results: str = ""  # results.db, kept in step
    results_rebuilt: bool = False


def log_repairs(log: EventLog, until_seq: int | None = None) -> Repairs:
    """The alias table and retractions stored up to `until_seq` (few events)."""
    return collect_repairs(log.stream(until_seq=until_seq, types=REPAIR_TYPES))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """A fold allocates millions of short-lived objects and makes no cycles: the cyclic
    collector only costs time there (~8 % of a replay, tools/bench_replay.py)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def fold_log(
    log: EventLog,
    state: mdb.FoldState,
    until_seq: int,
    repairs: Repairs | None = None,
) -> tuple[int, EventStream]:
    """Fold the log's events in `(state.last_seq, until_seq]` into `state`."""
    if repairs is None:
        repairs = log_repairs(log, until_seq)
    stream = CompletionIndex.of(log).stream_marked(after_seq=state.last_seq, until_seq=until_seq)
    with _gc_paused():
        n = mdb.fold(state, stream.with_earlier(), repairs)
    state.skipped_events += stream.skipped
    state.last_seq = until_seq
    state.chain_head = log.chain_head(until_seq) or ""
    if until_seq > 0 and not state.first_event:
        state.first_event = log.first_event_id()
    return n, stream


def other_log(log: EventLog, last_seq: int, chain_head: str, first_event: str) -> str | None:
    """Why a projection that says it folded `last_seq` events with `chain_head` (and the
    first event `first_event`) was not folded from `log` (None if it may have been: the
    same history up to `last_seq`). Identities a projection did not record are not checked."""
    if last_seq <= 0:
        return None  # nothing folded yet: any log's events are new to it
    if chain_head and log.chain_head(last_seq) != chain_head:
        return f"its chain head at seq {last_seq} is not this log's"
    if first_event and log.first_event_id() != first_event:
        return "its first event is not this log's"
    return None


def _say_rebuilt(what: str, why: str, log: EventLog) -> None:
    print(f"ultra: note: {what} was folded from another event log ({why}); rebuilding it"
          f" from {getattr(log, 'location', None) or 'this log'}", file=sys.stderr)


def replay(log: EventLog, until_seq: int) -> tuple[mdb.FoldState, EventStream]:
    """A fresh fold from zero, saving nothing (the audit's reference)."""
    state = mdb.FoldState()
    _, stream = fold_log(log, state, until_seq)
    return state, stream


def _saved_state(log: EventLog, until_seq: int) -> mdb.FoldState | None:
    """The saved state, if usable for an incremental run up to `until_seq`."""
    saved = load_projection_state(log, PROJECTION_NAME)
    if saved is None:
        return None
    version, last_seq, text = saved
    if version != mdb.STATE_VERSION or last_seq > until_seq:
        return None  # written by another fold version, or for another log
    try:
        state = mdb.load_state(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    why = other_log(log, last_seq, state.chain_head, state.first_event)
    if why is not None:
        _say_rebuilt("master_database.json's fold state", why, log)
        return None
    if log.has_types_after(last_seq, until_seq, REPAIR_TYPES):
        return None  # repairs apply retroactively: replay everything
    return state


def _rendered_before(log: EventLog, out: Path) -> tuple[bytes | None, mdb.RenderMemo | None]:
    """The file at `out` and the memo of the last render, for `mdb.render_file` to reuse
    what did not change (which it does only if the file is the one the memo describes)."""
    saved = load_projection_state(log, RENDER_MEMO_NAME)
    if saved is None or saved[0] != RENDER_MEMO_VERSION:
        return None, None
    try:
        memo = msgspec.json.decode(saved[2], type=mdb.RenderMemo)
        # O_NONBLOCK: opening a FIFO must not wait for a writer; only a regular file is read.
        with open(os.open(out, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size != memo.size:
                return None, None  # not the file the memo describes: no need to read it
            return fh.read(), memo
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None, None


def results_path(out: Path | str, results: Path | str | None = None) -> Path:
    """results.db lives beside master_database.json unless named."""
    return Path(results) if results is not None else Path(out).parent / RESULTS_NAME


def project(
    db: Path | str, out: Path | str, *, rebuild: bool = False, results: Path | str | None = None
) -> ProjectReport:
    """Bring `out` and results.db up to date with the log at `db` (incrementally unless
    `rebuild`)."""
    out = Path(out)
    results = results_path(out, results)
    with EventLog.open(db, create=False) as log:
        until = log.last_seq()  # a snapshot: later appends wait for the next run
        state = None if rebuild else _saved_state(log, until)
        rebuilt = state is None
        if state is None:
            state = mdb.FoldState()
        n, stream = fold_log(log, state, until)
        save_projection_state(log, PROJECTION_NAME, mdb.STATE_VERSION, state.last_seq, mdb.dump_state(state).decode()
        )
        previous, memo = (None, None) if rebuild else _rendered_before(log, out)
        data, memo = mdb.render_file(state, previous, memo)
        write_atomic(out, data)
        save_projection_state(log, RENDER_MEMO_NAME, RENDER_MEMO_VERSION, state.last_seq,
                                  msgspec.json.encode(memo).decode())
        results_rebuilt = update_results(log, results, until, rebuild=rebuild).rebuilt
    return ProjectReport(
        events_folded=n,
        last_seq=state.last_seq,
        rebuilt=rebuilt,
        skipped_unknown=stream.skipped_unknown,
        undecodable=stream.undecodable,
        out=str(out),
        results=str(results),
        results_rebuilt=results_rebuilt,
    )


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
    return rdb.MetricColumns(conn.execute(
        "SELECT name, column_name FROM metrics ORDER BY position").fetchall())


class _Rebuild(Exception):
    """An incremental update cannot give what a fresh fold would: rebuild instead."""


def _add_metric(conn: sqlite3.Connection, extra: rdb.MetricColumns, seq: int, name: str,
                suite: str, folded_up_to: int) -> None:
    """A new metric's column in `tests` (and its row in `metrics`). Tests of its suite
    folded by an earlier update may have had it (a results.db from before suite metrics had
    columns): then only a rebuild fills their column."""
    if folded_up_to and conn.execute("SELECT 1 FROM tests WHERE suite = ? AND seq <= ? LIMIT 1",
                                     (suite, folded_up_to)).fetchone():
        raise _Rebuild(name)
    if len(extra.names) == 1:
        cols = ", ".join(f"{c} {'INTEGER' if t is int else 'TEXT'}"
                         for c, t in rdb.METRIC_COLUMNS.items())
        conn.execute(f"CREATE TABLE metrics ({cols}, PRIMARY KEY (name))")
    column = extra.columns[name]
    conn.execute(f"ALTER TABLE tests ADD COLUMN {rdb.quoted(column)} FLOAT")
    conn.execute("INSERT INTO metrics (name, column_name, suite, seq, position) VALUES (?, ?, ?, ?, ?)",
                 (name, column, suite, seq, len(extra.names) - 1))


def _fold_results(conn: sqlite3.Connection, log: EventLog, meta: ResultsMeta, until: int,
                  repairs: Repairs) -> int:
    """Append the rows of events in `(meta.last_seq, until]` and advance `meta` (in the
    caller's transaction)."""
    stream = CompletionIndex.of(log).stream_marked(after_seq=meta.last_seq, until_seq=until)
    runs: dict[str, dict] = {}
    conditions: list[dict] = []

    def items() -> Iterator[mdb.Item]:
        for item in stream.with_earlier():
            e = item[1]
            if type(e) is RunStarted or type(e) is RunFinished:
                runs[e.run_id] = {**runs.get(e.run_id, {}), **rdb.run_update(e)}  # type: ignore[union-attr]
                if type(e) is RunStarted and e.conditions:
                    conditions.extend(rdb.condition_rows(e))
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
    with _gc_paused():
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
    if len(extra.names) > known_metrics:  # the views average the new metrics too
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
                _say_rebuilt(str(path), why, log)
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


def temp_beside(path: Path) -> tuple[int, str]:
    """A new file only this call created, in `path`'s directory, open for writing: what
    `tempfile.mkstemp` does, without importing tempfile (with shutil and random) into
    every `ultra project`."""
    _remove_dead_temps(path)
    while True:
        # The writer's pid in the name: a killed writer's file is found and removed later.
        tmp = os.path.join(path.parent, f".{path.name}.{os.getpid()}-{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue  # 48 random bits taken: draw again


def _remove_dead_temps(path: Path) -> None:
    """Remove the temp files that writers of `path` killed mid-write left (a results.db
    rebuild's can be 100 MB): those whose writer's pid is gone from this host."""
    from ultra.collect import liveness

    prefix = f".{path.name}."
    try:
        entries = [e.name for e in os.scandir(path.parent)
                   if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return  # no directory yet: nothing left over
    for name in entries:
        pid, dash, _ = name[len(prefix):-len(".tmp")].partition("-")
        if dash and pid.isdigit() and liveness.process_gone(int(pid), None):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path.parent, name))


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: readers see old or new, never half.

    The path given is written through, never replaced by a regular file: a symlink's target
    is written (atomically), and a device or FIFO is written into directly; both are said
    on stderr.
    """
    path = Path(path)
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        print(f"ultra: note: {path} is a symlink; writing its target {target}", file=sys.stderr)
        path = target
    if path.exists() and not path.is_file() and not path.is_dir():
        kind = "a character device" if stat.S_ISCHR(path.stat().st_mode) else "not a regular file"
        print(f"ultra: note: {path} is {kind}; writing into it, not replacing it", file=sys.stderr)
        try:
            with path.open("wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise UserError(f"{path}: cannot write ({exc.strerror})") from None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_beside(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise UserError(f"{path}: cannot write ({exc.strerror})") from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


__all__ = ["build_results", "fold_log", "fresh_results", "log_repairs", "metric_columns",
           "other_log", "project", "PROJECTION_NAME", "ProjectReport", "read_results_meta",
           "RENDER_MEMO_NAME", "RENDER_MEMO_VERSION", "replay", "RESULTS_NAME", "results_path",
           "ResultsMeta", "ResultsReport", "temp_beside", "update_results", "write_atomic"]
