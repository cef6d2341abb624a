"""The event log: append, idempotence, immutability, streaming, migrations, bad files."""

from __future__ import annotations

import sqlite3

import pytest
from storage_helpers import completed, db_errors, errored, raw_sql, ts

from ultra import events as ev
from ultra.errors import UserError
from ultra.eventlog.store import EventLog
from ultra.eventlog.locations import MIGRATIONS_TABLE, load_migrations
from ultra.projection.projection_state import load_projection_state, save_projection_state


def test_open_creates_parent_dirs_wal_and_records_migrations(tmp_path):
    db = tmp_path / "a" / "b" / "events.db"
    with EventLog.open(db) as log:
        conn = log.connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        applied = [r[0] for r in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version")]
        assert applied == [v for v, _, _ in load_migrations()]
        assert log.last_seq() == 0
    with EventLog.open(db, create=False) as log:  # reopening applies nothing twice
        n = log.connection.execute(f"SELECT COUNT(*) FROM {MIGRATIONS_TABLE}").fetchone()[0]
        assert n == len(load_migrations())


def test_migrations_are_recorded_once_on_both_backends(db):
    with EventLog.open(db) as log:
        dialect = log.dialect
        assert log.missing_guards() == []
    EventLog.open(db).close()
    with EventLog.open(db, create=False) as log:
        applied = [r[0] for r in raw_sql(log, f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version")]
        assert applied == [v for v, _, _ in load_migrations(dialect)]


def test_append_is_idempotent_by_event_id_and_counts_new_ones(db):
    with EventLog.open(db) as log:
        batch = [completed(i) for i in range(5)]
        assert log.append(batch) == 5
        assert log.append(batch[1:3]) == 0
        assert log.append([*batch[3:], completed(5), completed(5)]) == 1  # same id twice in a batch
        assert log.append([]) == 0
        assert log.count() == 6
        assert log.last_seq() == 6


def test_stream_round_trips_events_in_seq_order_across_batches(db):
    with EventLog.open(db) as log:
        sent = [completed(i) if i % 3 else errored(i) for i in range(23)]
        log.append(sent)
        got = list(log.stream(batch=4))
        assert [s for s, _ in got] == list(range(1, 24))
        assert [e for _, e in got] == sent
        assert [s for s, _ in log.stream(after_seq=20, batch=2)] == [21, 22, 23]
        assert [s for s, _ in log.stream(after_seq=5, until_seq=7)] == [6, 7]
        only = list(log.stream(types=["test.errored"], batch=2))
        assert all(isinstance(e, ev.TestErrored) for _, e in only) and len(only) == 8


def test_update_and_delete_of_events_fail(db):
    with EventLog.open(db) as log:
        log.append([completed(1)])
        for sql in ["UPDATE events SET model = 'x'", "DELETE FROM events",
                    "INSERT INTO events (seq, event_id, type, recorded_at, payload, hash)"
                    " SELECT seq, event_id, type, recorded_at, payload, hash FROM events WHERE true"
                    " ON CONFLICT (event_id) DO UPDATE SET payload = 'x'",
                    *(["TRUNCATE events"] if log.dialect == "postgresql" else [])]:
            with pytest.raises(db_errors(), match="immutable"):
                raw_sql(log, sql)
        assert [e.model for _, e in log.stream()] == ["DeepSeek-V3-0324"]


def test_unknown_types_are_stored_and_skipped_with_a_count(db):
    with EventLog.open(db) as log:
        log.append([completed(1)])
        r = log.append_raw([
            b'{"event_id": "n1", "type": "model.retired", "recorded_at": "2025-07-02T00:00:00Z", "model": "x", "seq": 9}',
        ])
        assert (r.read, r.stored, r.unknown_types) == (1, 1, 1)
        log.append([completed(2)])
        stream = log.stream()
        assert [s for s, _ in stream] == [1, 3]
        assert stream.skipped_unknown == 1 and stream.undecodable == 0


def test_undecodable_rows_are_skipped_and_counted(db):
    with EventLog.open(db) as log:
        log.append([completed(1)])
        raw_sql(log,  # a hand-made row: known type, payload that does not decode
            "INSERT INTO events (seq, event_id, type, recorded_at, payload, hash)"
            " VALUES (2, 'bad', 'test.completed', ?, '{\"type\":\"test.completed\"}', 'x')",
            (ts(2),),
        )
        stream = log.stream()
        assert [s for s, _ in stream] == [1]
        assert stream.undecodable == 1 and stream.undecodable_seqs == [2]


def test_append_raw_is_all_or_nothing_and_names_the_line(db):
    with EventLog.open(db) as log:
        good = ev.encode(completed(1)).decode()
        with pytest.raises(UserError, match=r"f.jsonl:3: not valid JSON"):
            log.append_raw([good, "", "{nope"], source="f.jsonl")
        with pytest.raises(UserError, match=r"in:2: invalid test.completed event"):
            log.append_raw([good, '{"type": "test.completed", "event_id": "x", "version": 2, "recorded_at": "t"}'],
                           source="in")
        with pytest.raises(UserError, match=r"in:2: event without 'version'"):
            log.append_raw([good, '{"type": "test.completed", "event_id": "x", "recorded_at": "t"}'], source="in")
        with pytest.raises(UserError, match=r"in:1: event of unknown type 'future.thing' with a bad identity"
                                            r" \(Object missing required field `event_id`\)"):
            log.append_raw(['{"type": "future.thing", "recorded_at": "2025-07-02T00:00:00Z"}'], source="in")
        with pytest.raises(UserError, match=r"in:1: not a JSON object"):
            log.append_raw(["[1, 2]"], source="in")
        assert log.count() == 0
        assert log.append_raw([good, good]).stored == 1


@pytest.mark.parametrize(
    "make, create, message",
    [
        (lambda p: p.write_bytes(b"\x00garbage" * 100), True, "not an SQLite database"),
        (lambda p: p.write_bytes(b""), False, "empty file"),
        (lambda p: None, False, "no event log there"),
        (lambda p: sqlite3.connect(p).execute("PRAGMA user_version = 1").connection.commit(), False,
         "an empty SQLite database, no event log there"),  # a run creating it, not yet committed
        (lambda p: p.mkdir(), True, "is a directory"),
        (lambda p: sqlite3.connect(p).execute("CREATE TABLE other (x)").connection.commit(), True,
         "not an ultra event log"),
        (lambda p: sqlite3.connect(p).execute("CREATE TABLE other (x)").connection.commit(), False,
         "not an ultra event log"),
        (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200), True, "the event log is corrupted"),
    ],
)
def test_bad_files_raise_one_line_user_errors(tmp_path, make, create, message):
    path = tmp_path / "x.db"
    make(path)
    with pytest.raises(UserError, match=message) as info:
        EventLog.open(path, create=create)
    assert "\n" not in str(info.value)


def test_append_is_usable_from_another_thread(db):
    import threading

    log = EventLog.open(db)
    threads = [threading.Thread(target=log.append, args=([completed(i) for i in range(k * 10, k * 10 + 10)],))
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.count() == 40
    log.close()


def test_postgresql_locations_that_are_not_logs_raise_one_line_user_errors(pg_server, pg_url):
    import psycopg

    with pytest.raises(UserError, match="no_such_db.*cannot connect") as info:
        EventLog.open(pg_server.url_of("no_such_db"))
    assert "\n" not in str(info.value)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE other (x int)")
    for create in (True, False):
        with pytest.raises(UserError, match="not an ultra event log"):
            EventLog.open(pg_url, create=create)
    with pytest.raises(UserError, match="no event log there"):
        EventLog.open(pg_server.create_database("empty_one"), create=False)
    with pytest.raises(UserError, match="cannot connect") as info:
        EventLog.open("postgresql://someone:secret-pw@127.0.0.1:1/x")
    assert "secret-pw" not in str(info.value)


def test_projection_state_round_trips_and_never_goes_backwards(db):
    with EventLog.open(db) as log:
        assert load_projection_state(log, "p") is None
        assert save_projection_state(log, "p", 1, 10, "{}")
        assert not save_projection_state(log, "p", 1, 9, "{old}")
        assert save_projection_state(log, "p", 1, 12, "{new}")
        assert load_projection_state(log, "p") == (1, 12, "{new}")


def test_in_lists_take_few_shapes_and_keep_every_value():
    """`IN (...)` lists come in powers of two (a bounded set of prepared statements however
    batch sizes vary), padded with a repeat, IN_CHUNK values at most."""
    from ultra.eventlog.store_tx import IN_CHUNK, in_chunks

    shapes = set()
    for n in range(1, 2 * IN_CHUNK + 3):
        values = [f"v{i}" for i in range(n)]
        chunks = list(in_chunks(values))
        assert [v for _, part in chunks for v in dict.fromkeys(part)] == values
        for marks, part in chunks:
            assert marks.count("?") == len(part) <= IN_CHUNK
            shapes.add(len(part))
    assert shapes == {1 << k for k in range(IN_CHUNK.bit_length())}
