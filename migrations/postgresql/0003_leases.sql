-- Leases: who holds a route (a key or a deployment) or a test right now. Not events: these
-- rows change and expire, so they live outside the immutable log (see ultra/leases.py).
-- A test claim whose test completed stays as a mark of the completion's seq (`done_seq`),
-- so a collector that planned before it does not run the test again, without searching
-- the log; marks no running plan predates are dropped.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,  -- 'route:<provider>/<route>' or 'test:<test key>'
    holder     TEXT NOT NULL,     -- one collector process: '<run id>/<host>/<pid>'
    run_id     TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL, -- seconds since the epoch, by the store's clock
    plan_seq   BIGINT NOT NULL,   -- the log's last seq when the holder planned
    done_seq   BIGINT             -- set: the test completed at this seq (the claim is over)
);

CREATE INDEX leases_by_holder ON leases (holder);
