-- Who holds a lease: its process's host, pid and start time (ultra/liveness.py), so that on
-- the same host a dead holder's leases are free at once instead of after their ttl.
ALTER TABLE leases ADD COLUMN host TEXT;
ALTER TABLE leases ADD COLUMN pid INTEGER;
ALTER TABLE leases ADD COLUMN started TEXT;
CREATE INDEX leases_by_host ON leases (host);
