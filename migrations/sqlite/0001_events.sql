-- The event log: append-only. `seq` is assigned by the log in commit order (writers take
-- the write lock before inserting), so reading by `seq` never misses a committed event.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    event_id    TEXT    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL,
    test_key    TEXT,
    model       TEXT,
    run_id      TEXT,
    payload     TEXT    NOT NULL
);

-- Duplicate-completion probes (is there an earlier completion of this test key?) and
-- resume look-ups; covering, so the probe never touches the table.
CREATE INDEX events_by_test_key ON events (test_key, type, seq);

-- Repairs (aliases, retractions) and shard events are few: read them by type.
CREATE INDEX events_by_type ON events (type, seq);

-- Nothing updates or deletes an event: corrections are new events.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable: append a correction event instead');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable: append a correction event instead');
END;
