"""Collection: the plan, the shards and their processes, the HTTP client, pacing, leases, resume."""
