"""The completion index (completion_keys) is derived data: a deleted or edited index is
found by `ultra audit` (exit 1, naming it, and rebuilt) and by resume (rebuilt from the
log, one line on stderr), so the next `ultra run` repeats no completed test. Real
processes: the bundled demo, run in an empty directory, then the index tampered with as
an adversary would (sqlite3, psycopg)."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest
from collection_helpers import events, ultra
from ultra.projection.completion_index import CompletionIndex

# No trigger guards completion_keys (derived data: rebuilt, not protected), and it is a
# WITHOUT ROWID table in SQLite, so every other row is picked by seq.
DELETE = "DELETE FROM completion_keys"
EDIT = "UPDATE completion_keys SET test_key = 'x' || test_key WHERE seq % 2 = 0"
# Same length: the cheap check resume makes does not see it; audit's row-by-row one does.
EDIT_SAME_LENGTH = "UPDATE completion_keys SET test_key = 'x' || SUBSTR(test_key, 2) WHERE seq % 2 = 0"


def _run_json(cwd, *args):
    proc = ultra("run", "--json", *args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout), proc.stderr


def _completed_once(db, expected: int) -> None:
    counts = Counter(e["test_key"] for e in events(db, "--type", "test.completed"))
    assert len(counts) == expected and set(counts.values()) == {1}, counts.most_common(3)


def _tampered(demo, tmp_path, change: str):
    """A copy of the session's demo run (tests/conftest.py) with its index tampered."""
    done = demo.completed
    assert done == demo.result["planned"] > 0
    demo.copy_to(tmp_path)
    conn = sqlite3.connect(tmp_path / "ultra-data" / "events.db")
    with conn:
        assert conn.execute(change).rowcount > 0
    conn.close()
    return tmp_path / "ultra-data" / "events.db", done


@pytest.mark.parametrize("change", [DELETE, EDIT, EDIT_SAME_LENGTH], ids=["deleted", "edited", "same-length"])
def test_audit_names_a_tampered_completion_index_and_rebuilds_it(demo, tmp_path, change):
    db, done = _tampered(demo, tmp_path, change)
    proc = ultra("audit", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    found = [line for line in proc.stdout.splitlines() if "completion index" in line]
    assert len(found) == 1 and "rebuilt it from the log" in found[0], proc.stdout
    again = ultra("audit", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    result, _ = _run_json(tmp_path)
    assert result["completed"] == 0 and result["skipped_completed"] == done
    _completed_once(db, done)


@pytest.mark.parametrize("change", [DELETE, EDIT], ids=["deleted", "edited"])
def test_resume_rebuilds_a_tampered_completion_index_and_repeats_nothing(demo, tmp_path, change):
    db, done = _tampered(demo, tmp_path, change)
    result, stderr = _run_json(tmp_path)
    assert result["completed"] == 0 and result["skipped_completed"] == done
    notes = [line for line in stderr.splitlines() if "completion index" in line]
    assert len(notes) == 1 and "rebuilding it from the log" in notes[0], stderr
    _completed_once(db, done)
    assert ultra("audit", cwd=tmp_path).returncode == 0


def test_postgresql_completion_index_tampered_is_found_and_nothing_repeats(pg_url, tmp_path):
    import psycopg

    one = ("--models", "sim-good")  # one model's 30 tests: the demo's shape, a quarter of its time
    result, _ = _run_json(tmp_path, "--db", pg_url, *one)
    done = result["completed"]
    assert done == result["planned"] > 0

    def tamper(sql: str) -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert conn.execute(sql).rowcount > 0

    def completed_once() -> None:
        proc = ultra("events", "--db", pg_url, "--type", "test.completed")
        assert proc.returncode == 0, proc.stderr
        counts = Counter(json.loads(line)["test_key"] for line in proc.stdout.splitlines() if line.strip())
        assert len(counts) == done and set(counts.values()) == {1}

    for change in (DELETE, EDIT, EDIT_SAME_LENGTH):  # audit finds each, rebuilds it
        tamper(change)
        proc = ultra("audit", "--db", pg_url, cwd=tmp_path)
        assert proc.returncode == 1 and "completion index" in proc.stdout, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        again, _ = _run_json(tmp_path, "--db", pg_url, *one)
        assert again["completed"] == 0 and again["skipped_completed"] == done
    for change in (DELETE, EDIT):  # resume finds each, rebuilds it
        tamper(change)
        again, stderr = _run_json(tmp_path, "--db", pg_url, *one)
        assert again["completed"] == 0 and again["skipped_completed"] == done
        assert "completion index" in stderr, stderr
    completed_once()
    assert ultra("audit", "--db", pg_url, cwd=tmp_path).returncode == 0


def test_store_checks_and_repairs_its_completion_index(db, capsys):
    """Store level, both backends: clean after indexing; rows deleted or edited are named,
    found by the next log before it trusts them, and repaired."""
    from storage_helpers import completed

    from ultra.eventlog.store import EventLog

    keys = {f"key-{i}" for i in range(10)}
    with EventLog.open(db) as log:
        log.append([completed(i) for i in range(10)])
        assert {k for k, _ in CompletionIndex.of(log).completions_of(keys)} == keys
        assert CompletionIndex.of(log).check_completion_index() == []
        raw = log.connection
        for sql in ("DELETE FROM completion_keys WHERE test_key IN ('key-1', 'key-2')",
                    "UPDATE completion_keys SET test_key = 'x' || test_key WHERE test_key = 'key-3'"):
            raw.execute(sql)
        if hasattr(raw, "commit"):
            raw.commit()
        problems = CompletionIndex.of(log).check_completion_index()
        assert any("3 of the log's completions" in p for p in problems), problems
        assert any("1 of its rows are no completion" in p for p in problems), problems
    with EventLog.open(db) as log:  # a log that has not checked it yet: rebuilds first
        assert {k for k, _ in CompletionIndex.of(log).completions_of(keys)} == keys
        assert "completion index does not match its recorded digest" in capsys.readouterr().err
        assert CompletionIndex.of(log).check_completion_index() == []
        assert CompletionIndex.of(log).repair_completion_index() == []
