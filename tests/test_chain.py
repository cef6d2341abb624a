"""Tamper evidence: every stored event is chained to the one before; `ultra audit` names
the first broken seq, and the projection records the chain head it was built from."""

from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_helpers import completed, raw_sql

from ultra.eventlog import chain
from ultra.projection.audit import audit
from ultra.projection.projecting import project
from ultra.eventlog.store import EventLog

UPDATE_GUARD = "events_no_update"


def _log(tmp_path, n=6, db=None):
    db, out = db or tmp_path / "events.db", tmp_path / "master_database.json"
    with EventLog.open(db) as log:
        log.append([completed(i) for i in range(1, n + 1)])
    project(db, out)
    return db, out


def _chain_findings(db, out):
    return [f for f in audit(db, out).findings if "chain" in f]


def _without_trigger(log, name: str, *statements: tuple[str, tuple]) -> None:
    """What an adversary with the database can do: drop a guard, change rows, put it back."""
    if log.dialect == "postgresql":
        raw_sql(log, f"ALTER TABLE events DISABLE TRIGGER {name}")
        for stmt, params in statements:
            raw_sql(log, stmt, params)
        raw_sql(log, f"ALTER TABLE events ENABLE TRIGGER {name}")
        return
    conn = log.connection
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    conn.execute(f"DROP TRIGGER {name}")
    for stmt, params in statements:
        conn.execute(stmt, params)
    conn.execute(sql)


def test_clean_log_verifies_and_the_projection_names_its_head(tmp_path, db):
    db, out = _log(tmp_path, db=db)
    assert audit(db, out).findings == []
    doc = json.loads(out.read_text())
    with EventLog.open(db, create=False) as log:
        rows = list(log.chain_rows())
        assert doc["chain_head"] == log.chain_head(6) == rows[-1][1]
        assert chain.first_break(rows) is None
        # each hash covers the one before, the seq and the payload
        assert rows[2][1] == chain.link(rows[1][1], 3, rows[2][2])


def test_chain_continues_across_appends_imports_and_duplicates(db):
    with EventLog.open(db) as log:
        log.append([completed(1), completed(2)])
        assert log.append([completed(2), completed(3), completed(3)]) == 1  # stored once each
        lines = [json.dumps({"type": "model.retired", "event_id": "u1", "recorded_at": "2025-07-02T00:00:00Z"}),
                 json.dumps({"type": "model.retired", "event_id": "u1", "recorded_at": "2025-07-02T00:00:00Z"})]
        assert log.append_raw(lines).stored == 1
        log.append([completed(4)])
        rows = list(log.chain_rows(batch=2))
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
        assert chain.first_break(rows) is None


@pytest.mark.parametrize("sql", [
    # REPLACE deletes the stored row without firing delete triggers: the insert guard stops it
    "REPLACE INTO events (seq, event_id, type, recorded_at, payload) SELECT seq, event_id, type, recorded_at, '{}' FROM events WHERE seq = 3",
    "REPLACE INTO events (seq, event_id, type, recorded_at, payload) SELECT 99, event_id, type, recorded_at, '{}' FROM events WHERE seq = 3",
    "REPLACE INTO events (seq, event_id, type, recorded_at, payload) VALUES (3, 'new-id', 'test.completed', 'x', '{}')",
    "INSERT OR REPLACE INTO events (seq, event_id, type, recorded_at, payload) SELECT seq, event_id, type, recorded_at, '{}' FROM events WHERE seq = 3",
    "INSERT INTO events (seq, event_id, type, recorded_at, payload) VALUES (3, 'x', 't', 'x', '{}') ON CONFLICT DO UPDATE SET payload = '{}'",
    "UPDATE events SET payload = '{}' WHERE seq = 3",
    "DELETE FROM events WHERE seq = 3",
])
def test_every_direct_rewrite_is_refused(tmp_path, sql):
    db, out = _log(tmp_path)
    with EventLog.open(db, create=False) as log:
        before = list(log.chain_rows())
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            log.connection.execute(sql)
        assert list(log.chain_rows()) == before
    assert audit(db, out).findings == []


def _tamper_payload(log):
    [(payload,)] = raw_sql(log, "SELECT payload FROM events WHERE seq = 3")
    return payload.replace('"full_success"', '"failure"')


@pytest.mark.parametrize("how", ["update", "replace", "delete", "hash only"])
def test_rewrites_behind_a_dropped_trigger_are_found_at_their_seq(tmp_path, how):
    db, out = _log(tmp_path)
    with EventLog.open(db, create=False) as log:
        forged = _tamper_payload(log)
        if how == "update":
            _without_trigger(log, UPDATE_GUARD, ("UPDATE events SET payload = ? WHERE seq = 3", (forged,)))
        elif how == "replace":
            _without_trigger(log, "events_no_overwrite", (
                "REPLACE INTO events (seq, event_id, type, recorded_at, test_key, model, run_id, payload, hash)"
                " SELECT seq, event_id, type, recorded_at, test_key, model, run_id, ?, hash FROM events WHERE seq = 3",
                (forged,)))
        elif how == "delete":
            _without_trigger(log, "events_no_delete", ("DELETE FROM events WHERE seq = 3", ()))
        else:
            _without_trigger(log, UPDATE_GUARD, ("UPDATE events SET hash = ? WHERE seq = 3", ("0" * 64,)))
        assert log.missing_guards() == []  # the triggers stand again
    project(db, out, rebuild=True)  # a rebuild does not launder it
    found = _chain_findings(db, out)
    broken = 4 if how == "delete" else 3
    assert found and f"hash chain broken at seq {broken}" in found[0]


def test_a_rechained_forgery_is_found_by_the_projection_head(tmp_path, db):
    """An adversary who recomputes every hash after the forged event keeps the chain
    consistent; the head recorded in master_database.json before that still pins it."""
    db, out = _log(tmp_path, db=db)
    with EventLog.open(db, create=False) as log:
        forged = _tamper_payload(log)
        rows = list(log.chain_rows())
        prev, updates = rows[1][1], []
        for seq, _, payload in rows[2:]:
            payload = forged if seq == 3 else payload
            prev = chain.link(prev, seq, payload)
            updates.append(("UPDATE events SET payload = ?, hash = ? WHERE seq = ?", (payload, prev, seq)))
        _without_trigger(log, UPDATE_GUARD, *updates)
        assert chain.first_break(log.chain_rows()) is None
    found = _chain_findings(db, out)
    assert "built from chain head" in found[0] and "at seq 6" in found[0] and "rewritten" in found[0]


def test_a_log_from_before_the_chain_is_chained_when_opened(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    from ultra.eventlog.locations import MIGRATIONS_TABLE, load_migrations

    old = [(v, n, sql) for v, n, sql in load_migrations() if v < 3]
    conn.execute(f"CREATE TABLE {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    for v, name, sql in old:
        conn.executescript(sql)
        conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES (?, ?, 'then')", (v, name))
    from ultra.eventlog.event_rows import event_row

    conn.executemany("INSERT INTO events (event_id, type, recorded_at, test_key, model, run_id, payload)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", [event_row(completed(i)) for i in range(1, 4)])
    conn.close()
    with EventLog.open(db) as log:
        rows = list(log.chain_rows())
        assert len(rows) == 3 and chain.first_break(rows) is None
        assert log.missing_guards() == []
        log.append([completed(4)])
    out = tmp_path / "m.json"
    project(db, out)
    assert audit(db, out).findings == []


@given(st.lists(st.text(max_size=30), min_size=1, max_size=20), st.data())
def test_first_break_names_the_first_changed_event(payloads, data):
    prev, rows = chain.GENESIS, []
    for seq, p in enumerate(payloads, 1):
        prev = chain.link(prev, seq, p)
        rows.append((seq, prev, p))
    assert chain.first_break(rows) is None
    i = data.draw(st.integers(0, len(rows) - 1))
    seq, h, p = rows[i]
    rows[i] = (seq, h, p + "x") if data.draw(st.booleans()) else (seq, h[::-1], p)
    assert chain.first_break(rows) == seq


@pytest.mark.parametrize("how", ["update", "delete", "hash only"])
def test_postgresql_rewrites_behind_a_disabled_trigger_are_found(tmp_path, pg_url, how):
    db, out = _log(tmp_path, db=pg_url)
    with EventLog.open(db, create=False) as log:
        forged = _tamper_payload(log)
        if how == "update":
            _without_trigger(log, UPDATE_GUARD, ("UPDATE events SET payload = ? WHERE seq = 3", (forged,)))
        elif how == "delete":
            _without_trigger(log, "events_no_delete", ("DELETE FROM events WHERE seq = 3", ()))
        else:
            _without_trigger(log, UPDATE_GUARD, ("UPDATE events SET hash = ? WHERE seq = 3", ("0" * 64,)))
        assert log.missing_guards() == []
        raw_sql(log, "ALTER TABLE events DISABLE TRIGGER events_no_truncate")
    project(db, out, rebuild=True)
    report = audit(db, out)
    broken = 4 if how == "delete" else 3
    assert f"hash chain broken at seq {broken}" in " ".join(report.findings)
    assert any("events_no_truncate is missing" in f for f in report.findings)
