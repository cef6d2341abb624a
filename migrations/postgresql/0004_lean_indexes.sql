-- Indexes that serve a query ultra runs, and nothing on the append path that scatters
-- writes (see migrations/sqlite/0005_lean_indexes.sql, the same change).
DROP INDEX events_by_test_key;
DROP INDEX events_by_type;

CREATE INDEX events_by_type ON events (type, seq, test_key, event_id);

-- Completions by test key, for duplicate detection: filled in bulk by readers that need
-- it (ultra/store.py `index_completions`), never by appenders. Its last indexed seq is
-- the projection_state row 'completion_keys'.
CREATE TABLE completion_keys (
    test_key TEXT   NOT NULL,
    seq      BIGINT NOT NULL,
    event_id TEXT   NOT NULL,
    PRIMARY KEY (test_key, seq)
);

INSERT INTO projection_state (name, version, last_seq, state) VALUES ('completion_keys', 1, 0, '');
