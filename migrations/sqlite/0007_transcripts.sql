-- Transcripts (ultra/transcripts.py, docs/transcripts.md): one row per test event that
-- carries a transcript digest, written in the events' group commit. `data` is zlib of the
-- transcript's JSON, whose sha256 is `digest` (the event's `transcript` field, so the
-- hash chain covers it). Keyed by the event's seq, not by the digest: rows then append at
-- the end of the table, as events do, where a sha256 key would dirty a random index page
-- per row (see 0005_lean_indexes.sql). The digest is the address an event names; audit
-- checks every row against it.
CREATE TABLE transcripts (
    seq    INTEGER PRIMARY KEY,  -- the seq of the event whose `transcript` is `digest`
    digest TEXT    NOT NULL,
    data   BLOB    NOT NULL
);

-- Immutable like the events they belong to.
CREATE TRIGGER transcripts_no_update BEFORE UPDATE ON transcripts
BEGIN
    SELECT RAISE(ABORT, 'transcripts are immutable');
END;

CREATE TRIGGER transcripts_no_delete BEFORE DELETE ON transcripts
BEGIN
    SELECT RAISE(ABORT, 'transcripts are immutable');
END;
