-- completion_keys' state records a digest of its rows (ultra/store.py INDEX_VERSION 2:
-- count, sum and greatest seq, total test-key and event-id length, added up as rows are
-- indexed), so a reader finds a deleted or edited index before trusting it. The index is
-- derived from the log: dropped here, and rebuilt by the next reader that needs it.
DELETE FROM completion_keys;
UPDATE projection_state SET version = 2, last_seq = 0,
    state = '{"rows":0,"seq_sum":0,"max_seq":0,"key_chars":0,"id_chars":0}'
    WHERE name = 'completion_keys';
