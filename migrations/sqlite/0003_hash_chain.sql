-- The hash chain (ultra/chain.py): every event's hash covers the one before it, its seq
-- and its payload. The store computes it inside the write transaction; logs written
-- before this migration are chained when it is applied.
ALTER TABLE events ADD COLUMN hash TEXT;

-- An insert may never land on a stored seq or event_id. `REPLACE INTO` (and
-- `INSERT OR REPLACE`) would otherwise delete the stored row without firing the delete
-- trigger; a BEFORE INSERT trigger runs before that deletion and aborts it.
CREATE TRIGGER events_no_overwrite BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq)
  OR EXISTS (SELECT 1 FROM events WHERE event_id = NEW.event_id)
BEGIN
    SELECT RAISE(ABORT, 'events are immutable: this seq or event_id is already stored');
END;
