"""Integrity checks of an event log and its projections (master_database.json, results.db).

Findings (anything wrong: exit 1): a broken hash chain (the first bad `seq` named), a
projection whose chain head is not the log's, missing immutability triggers, undecodable events,
duplicate completions of a test key, a completion index (completion_keys)
that differs from the log's completions (rebuilt), a projection (master_database.json, results.db)
that is missing, breaks an invariant, or differs from a fresh replay of the log. Notes (information only): counts,
a file that is merely behind the log, unknown event types (a newer writer's), and shards
started but never finished (interrupted runs are normal; `ultra run` resumes them).
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from projections import master_database as mdb
from projections import results_db as rdb
from projections.repairs import Repairs
from ultra.events import ShardFinished, ShardStarted
from ultra.eventlog import chain
from ultra.projection.results import fresh_results, read_results_meta, results_path
from ultra.projection.reading import log_repairs
from ultra.projection.projecting import replay
from ultra.errors import UserError
from ultra.eventlog.store import EventLog
from ultra.projection.completion_index import CompletionIndex

MAX_LISTED = 20  # findings of one kind listed one by one; the rest are counted


class AuditReport(msgspec.Struct):
    findings: list[str]
    notes: list[str]
    events: int
    last_seq: int

    @property
    def clean(self) -> bool:
        return not self.findings


def audit(db: Path | str, out: Path | str, results: Path | str | None = None) -> AuditReport:
    out = Path(out)
    results = results_path(out, results)
    findings: list[str] = []
    notes: list[str] = []
    with EventLog.open(db, create=False) as log:
        until = log.last_seq()
        count = log.count()
        notes.append(f"{count} events, last seq {until}")
        findings += [
            f"trigger {name} is missing: events are not protected from changes"
            for name in log.missing_guards()
        ]
        broken = chain.first_break(log.chain_rows())
        if broken is not None:
            findings.append(
                f"hash chain broken at seq {broken}: that event (or one before it) was changed,"
                " removed or inserted after it was stored"
            )
        # Before anything reads it (duplicates, replays): the completion index, row by row.
        findings += _check_completion_index(log)

        file_bytes, file_doc, file_seq = _read_projection(out, until, findings)
        state, stream = replay(log, file_seq)
        undecodable, unknown = stream.undecodable, stream.skipped_unknown
        undecodable_seqs = list(stream.undecodable_seqs)
        if file_seq < until:
            notes.append(
                f"{out} reflects the log up to seq {file_seq}; {until - file_seq} events since"
                " (run `ultra project`)"
            )
            rest = log.stream(after_seq=file_seq, until_seq=until)
            for _ in rest:
                pass
            undecodable += rest.undecodable
            unknown += rest.skipped_unknown
            undecodable_seqs += rest.undecodable_seqs

        head = state.chain_head or None
        if isinstance(file_doc, dict) and file_doc.get("chain_head") != head:
            findings.append(
                f"{out}: built from chain head {file_doc.get('chain_head')!r} at seq {file_seq},"
                f" but the log's hash there is {head!r}: the log was rewritten"
            )
        expected = mdb.render_bytes(state)
        findings += [f"fresh replay: {m}" for m in mdb.check_invariants(mdb.render(state))]
        if file_doc is not None:
            findings += [f"{out}: {m}" for m in mdb.check_invariants(file_doc)]
            if file_bytes != expected:
                diffs = _differences(file_doc, msgspec.json.decode(expected))
                findings.append(
                    f"{out}: differs from a fresh replay of the log up to seq {file_seq}"
                    f" ({'; '.join(diffs) or 'formatting'}); `ultra project --rebuild` restores it"
                )

        if undecodable:
            shown = ", ".join(map(str, undecodable_seqs[:MAX_LISTED]))
            findings.append(f"{undecodable} undecodable events (seq {shown})")
        if unknown:
            notes.append(f"{unknown} events of types this version does not know were skipped")

        findings += _check_results(log, results, until, notes)
        findings += _legacy_sources(log, file_seq, file_doc, results, notes)
        repairs = log_repairs(log, until)
        if repairs.legacy_retractions:
            notes.append(
                f"{repairs.legacy_retractions} retractions of schema version 1 withdraw nothing"
                " (they named no event ids); re-issue them with `ultra repair retract`"
            )
        findings += _duplicates(log, repairs)
        findings += _check_transcripts(log, notes)
        notes += _interrupted_shards(log, until)
    return AuditReport(findings=findings, notes=notes, events=count, last_seq=until)


_RESULTS_TABLES = (("tests", "event_id"), ("errored", "event_id"), ("runs", "run_id"),
                   ("aliases", "alias"), ("meta", "key"))
_RESULTS_TABLES += (("legacy_cells", "event_id"), ("legacy_imports", "source"))


def _check_results(log: EventLog, path: Path, until: int, notes: list[str]) -> list[str]:
    """results.db must equal a fresh fold of the log up to the seq it claims."""
    restore = "`ultra project --rebuild` restores it"
    if not path.exists():
        return [f"{path}: missing; {restore}"]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return [f"{path}: unreadable ({exc}); {restore}"]
    try:
        meta = read_results_meta(conn)
        if meta is None:
            return [f"{path}: not a results database; {restore}"]
        if meta.last_seq > until:
            return [f"{path}: claims seq {meta.last_seq}, but the log ends at seq {until}"]
        if meta.last_seq < until:
            notes.append(f"{path} reflects the log up to seq {meta.last_seq}; "
                         f"{until - meta.last_seq} events since (run `ultra project`)")
        fresh = fresh_results(log, meta.last_seq)
        bad = []
        try:
            present = "SELECT 1 FROM sqlite_master WHERE name = 'metrics'"
            suite_metrics = (conn.execute(present).fetchone() or fresh.conn.execute(present).fetchone())
            for table, key in (*_RESULTS_TABLES, *([("metrics", "name")] if suite_metrics else [])):
                sql = f"SELECT * FROM {table} ORDER BY {key}"
                got, want = conn.execute(sql).fetchall(), fresh.conn.execute(sql).fetchall()
                if got != want:
                    bad.append(f"{path}: table {table} differs from a fresh fold of the log up to"
                               f" seq {meta.last_seq} ({len(got)} rows, fresh {len(want)}); {restore}")
            keys = ", ".join(rdb.CELL_KEYS)
            sql = f"SELECT * FROM cells ORDER BY {keys}"
            if not _same_sums(conn.execute(sql).fetchall(), fresh.conn.execute(sql).fetchall()):
                bad.append(f"{path}: table cells differs from a fresh fold of the log up to"
                           f" seq {meta.last_seq}; {restore}")
        finally:
            fresh.close()
        return bad
    except sqlite3.Error as exc:
        return [f"{path}: unreadable ({exc}); {restore}"]
    finally:
        conn.close()


def _same_sums(got: list[tuple], want: list[tuple]) -> bool:
    """Rows equal, floats up to rounding (sums added in another grouping)."""
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        for x, y in zip(a, b):
            if isinstance(x, float) or isinstance(y, float):
                if not (isinstance(x, (int, float)) and isinstance(y, (int, float))
                        and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)):
                    return False
            elif x != y:
                return False
    return True


def _read_projection(out: Path, until: int, findings: list[str]) -> tuple[bytes | None, Any, int]:
    """(bytes, parsed document, seq it claims); records findings for what is wrong."""
    try:
        data = out.read_bytes()
    except FileNotFoundError:
        findings.append(f"{out}: missing; `ultra project --rebuild` restores it")
        return None, None, until
    except OSError as exc:
        findings.append(f"{out}: unreadable ({exc.strerror})")
        return None, None, until
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        findings.append(f"{out}: not valid JSON ({exc}); `ultra project --rebuild` restores it")
        return data, None, until
    seq = doc.get("last_seq") if isinstance(doc, dict) else None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        findings.append(f"{out}: no valid last_seq")
        return data, doc, until
    if seq > until:
        findings.append(f"{out}: claims seq {seq}, but the log ends at seq {until}")
        return data, doc, until
    return data, doc, seq


def _differences(got: Any, want: Any, path: str = "", limit: int = 5) -> list[str]:
    """The first few places where two documents differ, as 'path: file X, replay Y'."""
    out: list[str] = []
    if isinstance(got, dict) and isinstance(want, dict):
        for key in sorted(set(got) | set(want)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in got:
                out.append(f"{sub}: missing in file")
            elif key not in want:
                out.append(f"{sub}: not in replay")
            else:
                out += _differences(got[key], want[key], sub, limit - len(out))
            if len(out) >= limit:
                break
    elif got != want or type(got) is not type(want):
        out.append(f"{path}: file {got!r}, replay {want!r}")
    return out[:limit]


def _duplicates(log: EventLog, repairs: Repairs) -> list[str]:
    """Test keys with more than one unretracted completion (the projection counts one)."""
    dup: list[tuple[str, list[int]]] = []
    for key in sorted(CompletionIndex.of(log).repeated_test_keys()):
        live = [s for s, e in CompletionIndex.of(log).earlier_completions(key, 2**62) if not repairs.retracts(e)]
        if len(live) > 1:
            dup.append((key, live))
    out = [
        f"test key {key} completed {len(seqs)} times (seq {', '.join(map(str, seqs))}); counted once"
        for key, seqs in dup[:MAX_LISTED]
    ]
    if len(dup) > MAX_LISTED:
        out.append(f"... and {len(dup) - MAX_LISTED} more duplicated test keys")
    return out


def _check_completion_index(log: EventLog) -> list[str]:
    """completion_keys (what resume and duplicate detection read) against the log's
    completions; one that differs is named and rebuilt from the log."""
    problems = CompletionIndex.of(log).check_completion_index()
    if not problems:
        return []
    try:
        problems = CompletionIndex.of(log).repair_completion_index()  # checked again under the lock: a racing
        outcome = "rebuilt it from the log"       # indexer's rows are no damage
    except UserError as exc:
        outcome = f"could not rebuild it ({exc}); the next `ultra run` or `ultra project` does"
    if not problems:
        return []
    return [f"completion index (completion_keys) differs from the log: {'; '.join(problems)};"
            f" {outcome}"]


def _interrupted_shards(log: EventLog, until: int) -> list[str]:
    started: dict[tuple[str, str], ShardStarted] = {}
    finished: dict[tuple[str, str], ShardFinished] = {}
    for _, e in log.stream(until_seq=until, types=["shard.started", "shard.finished"]):
        if isinstance(e, ShardStarted):
            started[(e.run_id, e.shard_id)] = e
        elif isinstance(e, ShardFinished):
            finished[(e.run_id, e.shard_id)] = e
    lines = []
    for key in sorted(started):
        s = started[key]
        f = finished.get(key)
        if f is None:
            lines.append(f"interrupted: shard {s.shard_id} ({s.instance}) of run {s.run_id} never finished")
        elif f.interrupted:
            lines.append(
                f"interrupted: shard {s.shard_id} ({s.instance}) of run {s.run_id}:"
                f" {f.completed} completed, {f.errored} errored of {f.planned}"
            )
    if len(lines) > MAX_LISTED:
        lines = [*lines[:MAX_LISTED], f"... and {len(lines) - MAX_LISTED} more interrupted shards"]
    return lines


def _legacy_sources(log: EventLog, until: int, doc: Any, results: Path,
                    notes: list[str]) -> list[str]:
    """Every legacy source's projected totals (master_database.json, results.db) must equal
    the cells of its current import in the log, and the counts its import declares."""
    from projections.counting import current_legacy_cells
    from ultra.events import LegacyImported

    current: dict[str, str] = {}
    declared: dict[str, tuple[int, int]] = {}
    got: dict[str, list[int]] = {}
    items = log.stream(until_seq=until, types=["legacy.imported", "legacy.cell"])
    for _, e in current_legacy_cells(items, current):
        if type(e) is LegacyImported:
            declared[e.source] = (e.cells, e.tests)
            got[e.source] = [0, 0]
        else:
            got[e.source][0] += 1  # type: ignore[union-attr]
            got[e.source][1] += e.total  # type: ignore[union-attr]
    if not declared:
        return []
    bad: list[str] = []
    notes.append(f"{len(declared)} legacy sources, {sum(t for _, t in got.values())} tests")
    projected = (doc.get("summary") or {}).get("legacy_sources") if isinstance(doc, dict) else None
    in_db: dict[str, tuple[int, int]] = {}
    if results.exists():
        try:
            conn = sqlite3.connect(f"file:{results}?mode=ro", uri=True)
            try:
                in_db = {r[0]: (r[1], r[2]) for r in conn.execute(
                    "SELECT source, COUNT(*), SUM(n) FROM legacy_cells GROUP BY source")}
            finally:
                conn.close()
        except sqlite3.Error:
            pass  # reported by _check_results
    for source in sorted(declared):
        cells, tests = got[source]
        if declared[source] != (cells, tests):
            bad.append(f"legacy source {source!r}: its import declares {declared[source][0]} cells"
                       f" and {declared[source][1]} tests, the log holds {cells} and {tests}")
        if isinstance(doc, dict):
            p = (projected or {}).get(source) or {}
            if (p.get("cells"), p.get("tests")) != (cells, tests):
                bad.append(f"legacy source {source!r}: master_database.json counts"
                           f" {p.get('cells')} cells and {p.get('tests')} tests, its cells in the"
                           f" log {cells} and {tests}")
        if results.exists() and in_db.get(source, (0, 0)) != (cells, tests if cells else 0):
            bad.append(f"legacy source {source!r}: results.db holds {in_db.get(source, (0, 0))}"
                       f" (cells, tests), its cells in the log {cells} and {tests}")
    if isinstance(doc, dict):
        stated = (doc.get("summary") or {}).get("legacy_tests")
        total = sum(t for _, t in got.values())
        if stated != total:
            bad.append(f"master_database.json: summary legacy_tests {stated}, the legacy sources'"
                       f" cells add up to {total}")
    return bad


def _check_transcripts(log: EventLog, notes: list[str]) -> list[str]:
    """Every stored transcript against its digest and its event (a merge of both, by seq):
    changed (bytes that do not match), missing (an event names a digest no row has) and
    unreferenced (a row whose event does not name it, or no event at all)."""
    from ultra import transcripts as tr

    changed: list[str] = []
    missing: list[str] = []
    unreferenced: list[str] = []
    refs = log.transcript_refs()
    ref = next(refs, None)
    stored = 0

    def name(r: tuple[int, str, str | None, str]) -> str:
        return f"seq {r[0]} (event {r[1]}, test key {r[2]})"

    for seq, digest, blob in log.transcript_rows():
        stored += 1
        while ref is not None and ref[0] < seq:
            missing.append(f"transcript {ref[3]} of {name(ref)} is missing")
            ref = next(refs, None)
        if ref is not None and ref[0] == seq:
            if ref[3] != digest:
                unreferenced.append(f"transcript {digest} stored at {name(ref)} is not the one its"
                                    f" event names ({ref[3]}): unreferenced, and the event's is missing")
            elif (problem := tr.check(digest, blob)) is not None:
                changed.append(f"transcript {digest} of {name(ref)} was changed: {problem}")
            ref = next(refs, None)
        else:
            unreferenced.append(f"transcript {digest} at seq {seq} is unreferenced: no event"
                                " there names it")
    while ref is not None:
        missing.append(f"transcript {ref[3]} of {name(ref)} is missing")
        ref = next(refs, None)
    notes.append(f"{stored} transcripts stored")
    out = []
    for found in (changed, missing, unreferenced):
        out += found[:MAX_LISTED]
        if len(found) > MAX_LISTED:
            out.append(f"... and {len(found) - MAX_LISTED} more like it")
    return out


__all__ = ["audit", "AuditReport", "MAX_LISTED"]
