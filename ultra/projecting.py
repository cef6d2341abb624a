"""The imperative shell of projection: read the log, fold, save state, write the file.

`project` folds only the events after the saved state's `seq`, unless new repairs
(`alias.defined`, `tests.retracted`) arrived: those apply retroactively, so it replays
from zero. State and its last `seq` are saved in one transaction, then the file is
written atomically; a crash anywhere leaves either the old or the new projection.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec

from projections import master_database as mdb
from projections.repairs import REPAIR_TYPES, Repairs, collect_repairs
from ultra.errors import UserError
from ultra.events import TestCompleted
from ultra.store import EventLog, EventStream

PROJECTION_NAME = "master_database"


class ProjectReport(msgspec.Struct, frozen=True):
    events_folded: int  # events decoded and folded in this run
    last_seq: int  # the projection now reflects every event up to here
    rebuilt: bool  # replayed from zero (asked for, new repairs, or no usable saved state)
    skipped_unknown: int  # rows of unknown types in this run (a newer writer's)
    undecodable: int  # rows of known types that did not decode, in this run
    out: str


def log_repairs(log: EventLog, until_seq: int | None = None) -> Repairs:
    """The alias table and retractions stored up to `until_seq` (few events)."""
    return collect_repairs(log.stream(until_seq=until_seq, types=REPAIR_TYPES))


def _items(log: EventLog, stream: EventStream) -> Iterator[mdb.Item]:
    """Attach earlier completions of the same test key, probed only when one exists."""
    for seq, event, repeat in stream.marked():
        if repeat and isinstance(event, TestCompleted):
            yield seq, event, [e for _, e in log.earlier_completions(event.test_key, seq)]
        else:
            yield seq, event, ()


def fold_log(
    log: EventLog,
    state: mdb.FoldState,
    until_seq: int,
    repairs: Repairs | None = None,
) -> tuple[int, EventStream]:
    """Fold the log's events in `(state.last_seq, until_seq]` into `state`."""
    if repairs is None:
        repairs = log_repairs(log, until_seq)
    stream = log.stream_marked(after_seq=state.last_seq, until_seq=until_seq)
    n = mdb.fold(state, _items(log, stream), repairs)
    state.skipped_events += stream.skipped
    state.last_seq = until_seq
    state.chain_head = log.chain_head(until_seq) or ""
    return n, stream


def replay(log: EventLog, until_seq: int) -> tuple[mdb.FoldState, EventStream]:
    """A fresh fold from zero, saving nothing (the audit's reference)."""
    state = mdb.FoldState()
    _, stream = fold_log(log, state, until_seq)
    return state, stream


def _saved_state(log: EventLog, until_seq: int) -> mdb.FoldState | None:
    """The saved state, if usable for an incremental run up to `until_seq`."""
    saved = log.load_projection_state(PROJECTION_NAME)
    if saved is None:
        return None
    version, last_seq, text = saved
    if version != mdb.STATE_VERSION or last_seq > until_seq:
        return None  # written by another fold version, or for another log
    try:
        state = mdb.load_state(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if log.has_types_after(last_seq, until_seq, REPAIR_TYPES):
        return None  # repairs apply retroactively: replay everything
    return state


def project(db: Path | str, out: Path | str, *, rebuild: bool = False) -> ProjectReport:
    """Bring `out` up to date with the log at `db` (incrementally unless `rebuild`)."""
    out = Path(out)
    with EventLog.open(db, create=False) as log:
        until = log.last_seq()  # a snapshot: later appends wait for the next run
        state = None if rebuild else _saved_state(log, until)
        rebuilt = state is None
        if state is None:
            state = mdb.FoldState()
        n, stream = fold_log(log, state, until)
        log.save_projection_state(
            PROJECTION_NAME, mdb.STATE_VERSION, state.last_seq, mdb.dump_state(state).decode()
        )
        data = mdb.render_bytes(state)
    write_atomic(out, data)
    return ProjectReport(
        events_folded=n,
        last_seq=state.last_seq,
        rebuilt=rebuilt,
        skipped_unknown=stream.skipped_unknown,
        undecodable=stream.undecodable,
        out=str(out),
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: readers see old or new, never half."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
