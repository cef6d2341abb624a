"""The event log: append, read and chain events (SQLite or PostgreSQL), and the leases table."""
