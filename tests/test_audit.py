"""ultra audit: findings for what is wrong, notes for what is merely worth knowing."""

from __future__ import annotations

import json

from storage_helpers import completed, ts

from ultra import events as ev
from ultra.projection.audit import audit
from ultra.projection.projecting import project
from ultra.eventlog.store import EventLog


def _shard(kind: type, shard: str, **kw: object) -> ev.Event:
    base = dict(run_id="run-1", shard_id=shard, model="DeepSeek-V3-0324", instance=shard, planned=2)
    if kind is ev.ShardStarted:
        base.update(provider="azure", strategy="per-deployment", workers=2, qps=10.0)
    else:
        base.update(completed=kw.pop("completed", 2), errored=0)
    return kind(**base, **kw)


def _setup(tmp_path, events):
    db, out = tmp_path / "events.db", tmp_path / "master_database.json"
    with EventLog.open(db) as log:
        log.append(events)
    project(db, out)
    return db, out


def test_clean_log_with_an_interrupted_shard_is_clean_but_noted(tmp_path):
    db, out = _setup(tmp_path, [
        _shard(ev.ShardStarted, "a"), _shard(ev.ShardStarted, "b"), _shard(ev.ShardStarted, "c"),
        completed(1), completed(2),
        _shard(ev.ShardFinished, "a"),
        _shard(ev.ShardFinished, "c", interrupted=True, completed=1),
    ])
    r = audit(db, out)
    assert r.clean, r.findings
    interrupted = [n for n in r.notes if n.startswith("interrupted")]
    assert len(interrupted) == 2
    assert any("shard b" in n and "never finished" in n for n in interrupted)


def test_duplicate_test_keys_are_findings_unless_retracted(tmp_path):
    db, out = _setup(tmp_path, [
        completed(1), completed(2, event_id="dup", test_key="key-1"),
        completed(3), completed(4, event_id="redo", test_key="key-3", run_id="retest"),
    ])
    with EventLog.open(db) as log:
        log.append([ev.TestsRetracted(recorded_at=ts(5), selector=ev.Selector(test_keys=["key-3"]),
                                      reason="redo", withdraws=["c3"])])
    project(db, out)
    r = audit(db, out)
    assert len(r.findings) == 1 and "key-1 completed 2 times (seq 1, 2)" in r.findings[0]


def test_undecodable_events_and_missing_triggers_are_findings(tmp_path):
    db, out = _setup(tmp_path, [completed(1)])
    with EventLog.open(db) as log:
        conn = log.connection
        conn.execute("INSERT INTO events (event_id, type, recorded_at, payload)"
                     " VALUES ('x', 'test.completed', 't', '{\"broken\": 1}')")
        conn.execute("DROP TRIGGER events_no_delete")
    project(db, out)
    r = audit(db, out)
    assert any("1 undecodable events (seq 2)" in f for f in r.findings)
    assert any("events_no_delete is missing" in f for f in r.findings)


def test_a_file_behind_the_log_is_a_note_and_a_file_ahead_is_a_finding(tmp_path):
    db, out = _setup(tmp_path, [completed(1)])
    with EventLog.open(db) as log:
        log.append([completed(2)])
    r = audit(db, out)
    assert r.clean and any("1 events since" in n for n in r.notes)
    doc = json.loads(out.read_bytes())
    doc["last_seq"] = 9
    out.write_text(json.dumps(doc))
    assert any("claims seq 9" in f for f in audit(db, out).findings)
    out.write_text("{not json")
    assert any("not valid JSON" in f for f in audit(db, out).findings)


def test_an_edit_that_keeps_the_invariants_is_still_caught_by_the_replay(tmp_path):
    db, out = _setup(tmp_path, [completed(1), completed(2, outcome="failure", error_category="timeout")])
    text = out.read_text().replace('"avg_turns": 3.0', '"avg_turns": 4.0')
    out.write_text(text)
    r = audit(db, out)
    assert len(r.findings) == 1 and "avg_turns: file 4.0, replay 3.0" in r.findings[0]
