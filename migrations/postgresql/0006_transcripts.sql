-- Transcripts (ultra/transcripts.py, docs/transcripts.md): one row per test event that
-- carries a transcript digest, written in the events' group commit; `data` is zlib of the
-- transcript's JSON, whose sha256 is `digest`. Keyed by the event's seq (appends stay at
-- the end of the index; see migrations/sqlite/0007_transcripts.sql).
CREATE TABLE transcripts (
    seq    BIGINT PRIMARY KEY,
    digest TEXT   NOT NULL,
    data   BYTEA  NOT NULL
);

-- Already compressed: TOAST stores it out of line without trying pglz on it again.
ALTER TABLE transcripts ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE FUNCTION transcripts_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'transcripts are immutable';
END
$$;

CREATE TRIGGER transcripts_no_update BEFORE UPDATE ON transcripts
    FOR EACH ROW EXECUTE FUNCTION transcripts_immutable();
CREATE TRIGGER transcripts_no_delete BEFORE DELETE ON transcripts
    FOR EACH ROW EXECUTE FUNCTION transcripts_immutable();
