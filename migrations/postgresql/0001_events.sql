-- The event log: append-only. `seq` is assigned by the writer holding the append lock
-- (an advisory lock, see ultra/store_postgres.py), in commit order, so a reader by `seq`
-- never passes an event that commits later with a lower `seq`. `hash` is the chain
-- (ultra/chain.py) over the one before, this seq and the payload.
CREATE TABLE events (
    seq         BIGINT  PRIMARY KEY,
    event_id    TEXT    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL,
    test_key    TEXT,
    model       TEXT,
    run_id      TEXT,
    payload     TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);

CREATE INDEX events_by_test_key ON events (test_key, type, seq);
CREATE INDEX events_by_type ON events (type, seq);

-- Nothing updates, deletes or truncates an event: corrections are new events. An insert
-- on a stored seq or event_id is refused by the primary key and unique constraints (and
-- INSERT ... ON CONFLICT DO UPDATE by the update trigger); PostgreSQL has no REPLACE.
CREATE FUNCTION events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: append a correction event instead';
END
$$;

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_immutable();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_immutable();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_immutable();
