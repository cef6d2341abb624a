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

import os
import stat
from pathlib import Path

import msgspec

from projections import master_database as mdb
from projections.repairs import REPAIR_TYPES, Repairs
from ultra.eventlog.event_stream import EventStream
from ultra.eventlog.store import EventLog
from ultra.projection.completion_index import CompletionIndex
from ultra.projection.projection_state import load_projection_state, save_projection_state
from ultra.projection.files import write_atomic
from ultra.projection.reading import gc_paused, log_repairs, other_log, say_rebuilt
from ultra.projection.results import results_path, update_results


PROJECTION_NAME = "master_database"
RENDER_MEMO_NAME = "master_database.file"  # what the last render wrote (mdb.RenderMemo)
RENDER_MEMO_VERSION = 2


class ProjectReport(msgspec.Struct, frozen=True):
    events_folded: int  # events decoded and folded in this run
    last_seq: int  # the projection now reflects every event up to here
    rebuilt: bool  # replayed from zero (asked for, new repairs, or no usable saved state)
    skipped_unknown: int  # rows of unknown types in this run (a newer writer's)
    undecodable: int  # rows of known types that did not decode, in this run
    out: str
    results: str = ""  # results.db, kept in step
    results_rebuilt: bool = False


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
    with gc_paused():
        n = mdb.fold(state, stream.with_earlier(), repairs)
    state.skipped_events += stream.skipped
    state.last_seq = until_seq
    state.chain_head = log.chain_head(until_seq) or ""
    if until_seq > 0 and not state.first_event:
        state.first_event = log.first_event_id()
    return n, stream


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
        say_rebuilt("master_database.json's fold state", why, log)
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


__all__ = ["fold_log", "project", "PROJECTION_NAME", "ProjectReport", "RENDER_MEMO_NAME",
           "RENDER_MEMO_VERSION", "replay"]
