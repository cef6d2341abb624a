-- Indexes that serve a query ultra runs, and nothing on the append path that scatters
-- writes (tools/bench_store.py measures it). The (test_key, type, seq) index took a random
-- page per insert: 9.5 KB written per event against 2.9 KB for the bare rows.
DROP INDEX events_by_test_key;
DROP INDEX events_by_type;

-- Appends land at the end of their type's range (seq grows), so this costs a few
-- sequential pages a batch. Covering for resume (test keys and event ids of completions),
-- for reading repairs and shard events by type, and for catching up completion_keys.
CREATE INDEX events_by_type ON events (type, seq, test_key, event_id);

-- Completions by test key, for duplicate detection: filled by readers that need it
-- (ultra/store.py `index_completions`), in test-key order and in bulk, never by appenders.
-- Its last indexed seq is the projection_state row 'completion_keys'. Derived from the
-- immutable log, so never rewritten, only extended.
CREATE TABLE completion_keys (
    test_key TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    event_id TEXT    NOT NULL,
    PRIMARY KEY (test_key, seq)
) WITHOUT ROWID;

INSERT INTO projection_state (name, version, last_seq, state) VALUES ('completion_keys', 1, 0, '');
