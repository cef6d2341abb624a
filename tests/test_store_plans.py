"""Access paths of the log's hot queries, pinned with EXPLAIN QUERY PLAN (SQLite), and the
duplicate index that readers, not appenders, fill (both backends)."""

from __future__ import annotations

from storage_helpers import completed, errored, raw_sql

from ultra.projection.completion_index import (
    EARLIER_COMPLETION,
    REPEATED_KEYS_QUERY,
    REPEATED_SEQS_QUERY,
    REPEATS_AFTER_QUERY,
    RESUME_QUERY,
)
from ultra.eventlog.store import EventLog
from ultra.projection.completion_index import CompletionIndex


def plan(log: EventLog, sql: str, params: tuple) -> str:
    rows = log.connection.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    return "\n".join(r[-1] for r in rows)


def filled(tmp_path) -> EventLog:
    log = EventLog.open(tmp_path / "events.db")
    log.append([completed(i) for i in range(50)] + [errored(i) for i in range(10)])
    log.connection.execute("ANALYZE")  # the planner's choice with statistics, too
    return log


def test_resume_reads_a_covering_index_without_sorting(tmp_path):
    with filled(tmp_path) as log:
        got = plan(log, RESUME_QUERY, (0, 5000))
        assert "USING COVERING INDEX events_by_type" in got, got
        assert "TEMP B-TREE" not in got, got


def test_repeated_keys_scan_completion_keys_in_key_order(tmp_path):
    with filled(tmp_path) as log:
        got = plan(log, REPEATED_KEYS_QUERY, (10**9,))
        # A WITHOUT ROWID table is its primary key: scanning it is the covering index.
        assert "completion_keys" in got and "TEMP B-TREE" not in got, got
        assert "events" not in got, got


def test_earlier_completion_probe_is_a_primary_key_search(tmp_path):
    with filled(tmp_path) as log:
        sql = (f"SELECT e.seq, {EARLIER_COMPLETION} FROM events e WHERE e.seq > ?"
               " ORDER BY e.seq LIMIT ?")
        got = plan(log, sql, (0, 10))
        assert "SEARCH p USING PRIMARY KEY (test_key=? AND seq<?)" in got, got
        assert "TEMP B-TREE" not in got, got


def test_repeated_seqs_are_primary_key_searches_of_the_repeated_keys(tmp_path):
    with filled(tmp_path) as log:
        got = plan(log, REPEATED_SEQS_QUERY, (10**9, 10**9))
        assert "SEARCH completion_keys USING PRIMARY KEY (test_key=?" in got, got
        assert "TEMP B-TREE" not in got and "events" not in got, got


def test_repeats_after_a_seq_probe_only_the_new_completions(tmp_path):
    with filled(tmp_path) as log:
        got = plan(log, REPEATS_AFTER_QUERY, (40, 60))
        assert "USING COVERING INDEX events_by_type (type=? AND seq>? AND seq<?)" in got, got
        assert "SEARCH p USING PRIMARY KEY (test_key=? AND seq<?)" in got, got
        assert "TEMP B-TREE" not in got, got


def test_appends_maintain_no_index_keyed_by_test_key(tmp_path):
    """Random test keys would dirty a page per insert; event ids are time-ordered."""
    with filled(tmp_path) as log:
        conn = log.connection
        for (name,) in conn.execute("SELECT name FROM pragma_index_list('events')").fetchall():
            first = conn.execute(
                "SELECT name FROM pragma_index_info(?) ORDER BY seqno LIMIT 1", (name,)).fetchone()
            assert first[0] in ("event_id", "type"), (name, first)


def test_readers_fill_completion_keys_and_find_duplicates(db):
    with EventLog.open(db) as log:
        log.append([completed(i) for i in range(5)])
        assert raw_sql(log, "SELECT COUNT(*) FROM completion_keys") == [(0,)]  # not appenders
        again = completed(2, event_id="again-2")
        log.append([again, errored(7)])
        assert CompletionIndex.of(log).repeated_test_keys() == {again.test_key}
        assert raw_sql(log, "SELECT COUNT(*) FROM completion_keys") == [(6,)]
        assert [s for s, _ in CompletionIndex.of(log).earlier_completions(again.test_key, 6)] == [3]
        later = completed(4, event_id="again-4")
        log.append([later])  # past the indexed seq: the probe catches up first
        assert [s for s, _ in CompletionIndex.of(log).earlier_completions(later.test_key, log.last_seq())] == [5]
        assert CompletionIndex.of(log).repeated_test_keys() == {again.test_key, later.test_key}
        stream = CompletionIndex.of(log).stream_marked(after_seq=7)
        assert [(s, bool(r)) for s, _, r in stream.marked()] == [(8, True)]
        # From zero: every completion of a repeated key is marked, the first ones too.
        marked = [s for s, _, r in CompletionIndex.of(log).stream_marked().marked() if r]
        assert marked == [3, 5, 6, 8]
        earlier = {s: [e.event_id for e in r] for s, _, r in CompletionIndex.of(log).stream_marked().with_earlier() if r}
        assert earlier == {6: [completed(2).event_id], 8: [completed(4).event_id]}
        keys = list(CompletionIndex.of(log).completions(batch=2))
        assert len(keys) == 7 and keys[-1] == (later.test_key, "again-4")


def test_resume_of_a_selection_is_a_primary_key_search(tmp_path):
    from ultra.projection.completion_index import COMPLETIONS_OF_QUERY

    with filled(tmp_path) as log:
        got = plan(log, f"{COMPLETIONS_OF_QUERY} (?, ?)", ("a", "b"))
        assert "SEARCH completion_keys USING PRIMARY KEY (test_key=?)" in got, got


def test_resume_among_keys_matches_the_full_scan(db):
    from ultra.collect.resume import completed_test_keys

    with EventLog.open(db) as log:
        log.append([completed(i) for i in range(6)] + [errored(9), completed(2, event_id="dup")])
        everything = completed_test_keys(log)
        some = {completed(i).test_key for i in (1, 2, 7)} | {errored(9).test_key}
        assert completed_test_keys(log, some) == everything & some == {
            completed(1).test_key, completed(2).test_key}
