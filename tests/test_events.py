"""Strict events: every field constrained on import and on read; old versions still read."""

from __future__ import annotations

import json

import msgspec
import pytest
from storage_helpers import completed, ts

from ultra import events as ev
from ultra.errors import UserError
from ultra.eventlog.store import EventLog

# A test.completed as version 1 wrote it (the result fields flat on the event).
V1_COMPLETED = {
    "type": "test.completed", "event_id": "old1", "version": 1, "recorded_at": ts(1),
    "run_id": "r", "shard_id": "s", "test_key": "k1", "suite": "workflow", "model": "m",
    "instance": "m", "provider": "p", "simulated": True, "task_id": "t", "task_type": "simple_task",
    "difficulty": "easy", "prompt_type": "baseline", "tool_success_rate": 0.8, "retries": 0,
    "execution_time": 0.5, "started_at": ts(0), "outcome": "partial_success",
    "workflow_score": 0.7, "phase2_score": 0.6, "quality_score": 0.9, "final_score": 0.72,
    "turns": 4, "tool_calls": 3, "tool_coverage": 0.5, "required_tools": 2,
    "error_category": "max_turns", "assisted_turns": 0,
    "usage": {"prompt_tokens": 10, "completion_tokens": 5},
}


def test_a_version_1_completion_reads_with_its_result_lifted():
    e = ev.decode(json.dumps(V1_COMPLETED))
    assert isinstance(e, ev.TestCompleted) and e.version == 1
    assert e.result.outcome == "partial_success" and e.result.error_category == "max_turns"
    assert (e.result.turns, e.result.tool_calls, e.result.tool_coverage) == (4, 3, 0.5)
    assert e.result.metrics == {"workflow_score": 0.7, "phase2_score": 0.6, "quality_score": 0.9,
                                "final_score": 0.72}


def test_a_version_1_log_imports_projects_and_keeps_its_bytes(tmp_path):
    from ultra.projection.audit import audit
    from ultra.projection.projecting import project

    db, out = tmp_path / "e.db", tmp_path / "m.json"
    legacy_retraction = {"type": "tests.retracted", "event_id": "old2", "version": 1,
                         "recorded_at": ts(2), "selector": {"run_id": "r"}, "reason": "old"}
    lines = [json.dumps(V1_COMPLETED), json.dumps(legacy_retraction)]
    with EventLog.open(db) as log:
        assert log.append_raw(lines).stored == 2
        (_, payload), = [(s, p) for s, t, m, p in log.raw(types=["test.completed"])]
        assert json.loads(payload) == V1_COMPLETED  # stored as written: immutable
    project(db, out)
    doc = json.loads(out.read_text())
    assert doc["summary"]["total_tests"] == 1  # the v1 retraction withdraws nothing
    assert doc["summary"]["avg_final_score"] == 0.72
    r = audit(db, out)
    assert r.clean, r.findings
    assert any("schema version 1 withdraw nothing" in n for n in r.notes)


BAD = [
    ({"version": 99}, "unknown schema version 99"),
    ({"version": 3}, "unknown schema version 3"),
    ({"tool_success_rate": 7.5}, "Expected `float` <= 1.0 - at `$.tool_success_rate`"),
    ({"tool_success_rate": -0.1}, "tool_success_rate"),
    ({"result": {"outcome": "failure", "error_category": "made_up"}}, "$.result.error_category"),
    ({"result": {"outcome": "failure"}}, "error_category is required"),
    ({"result": {"outcome": "full_success", "error_category": "other"}}, "error_category is required"),
    ({"result": {"outcome": "won"}}, "$.result.outcome"),
    ({"result": {"outcome": "full_success", "turns": -5}}, "$.result.turns"),
    ({"result": {"outcome": "full_success", "tool_coverage": 1.5}}, "$.result.tool_coverage"),
    ({"result": {"outcome": "full_success", "metrics": {"": 1.0}}}, "$.result.metrics"),
    ({"result": {"outcome": "full_success", "metrics": {"x": 1e300}}}, "$.result.metrics"),
    ({"recorded_at": "zzz"}, "$.recorded_at"),
    ({"recorded_at": "2025-07-01 00:00:00"}, "$.recorded_at"),
    ({"started_at": "x" * 41}, "$.started_at"),
    ({"event_id": ""}, "$.event_id"),
    ({"event_id": "x" * 129}, "$.event_id"),
    ({"model": ""}, "$.model"),
    ({"execution_time": -1.0}, "$.execution_time"),
    ({"retries": -1}, "$.retries"),
    ({"usage": {"prompt_tokens": -3}}, "$.usage.prompt_tokens"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m for _, m in BAD])
def test_a_bad_field_is_refused_on_import_naming_the_line(tmp_path, change, message):
    good = ev.encode(completed(1)).decode()
    bad = json.loads(ev.encode(completed(2)))
    bad.update(change)
    with EventLog.open(tmp_path / "e.db") as log:
        with pytest.raises(UserError, match=r"^in:2: ") as exc:
            log.append_raw([good, json.dumps(bad)], source="in")
        assert message in str(exc.value)
        assert log.count() == 0  # all or nothing


@pytest.mark.parametrize("missing", ["event_id", "recorded_at", "version"])
def test_identity_fields_are_required_in_bytes(tmp_path, missing):
    bad = json.loads(ev.encode(completed(2)))
    del bad[missing]
    with EventLog.open(tmp_path / "e.db") as log:
        with pytest.raises(UserError, match=rf"in:1: event without '{missing}'"):
            log.append_raw([json.dumps(bad)], source="in")
        assert log.count() == 0


def test_a_bad_field_is_refused_on_read_too(tmp_path):
    """A row that bypassed import (written by hand) is undecodable, not counted."""
    bad = json.loads(ev.encode(completed(2)))
    bad["result"]["error_category"] = "made_up"
    with EventLog.open(tmp_path / "e.db") as log:
        log.append([completed(1)])
        log.connection.execute(
            "INSERT INTO events (event_id, type, recorded_at, payload) VALUES (?, ?, ?, ?)",
            ("c2", "test.completed", ts(2), json.dumps(bad)))
        stream = log.stream()
        assert [s for s, _ in stream] == [1] and stream.undecodable_seqs == [2]
    with pytest.raises(msgspec.ValidationError):
        ev.decode(json.dumps(bad))


def test_a_changed_event_under_a_stored_event_id_is_a_conflict(tmp_path):
    first = ev.encode(completed(1)).decode()
    changed = json.loads(first)
    changed["result"]["outcome"] = "failure"
    changed["result"]["error_category"] = "other"
    with EventLog.open(tmp_path / "e.db") as log:
        log.append_raw([first])
        with pytest.raises(UserError, match=r"^in:2: event 'c1' differs from the stored event seq 1"):
            log.append_raw([ev.encode(completed(5)).decode(), json.dumps(changed)], source="in")
        assert log.count() == 1  # nothing of the conflicting file was imported
        # within one file too
        with pytest.raises(UserError, match=r"^in:3: event 'c7' differs from the one on in:1"):
            seven = json.loads(ev.encode(completed(7)))
            log.append_raw([json.dumps(seven), first, json.dumps({**seven, "retries": 2})], source="in")
        assert log.count() == 1
        # the same event again (any key order) is no conflict: it is stored once
        same = json.dumps(dict(reversed(list(json.loads(first).items()))))
        assert log.append_raw([same, first]).stored == 0


def test_the_list_type_of_the_issue_is_one_line(tmp_path):
    with EventLog.open(tmp_path / "e.db") as log:
        with pytest.raises(UserError, match=r"in:1: event without a string 'type'"):
            log.append_raw(['{"type":["a"],"event_id":"a","recorded_at":"x"}'], source="in")
