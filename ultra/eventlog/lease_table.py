"""Leases: who holds a route or a test, in a table of their own beside the events.

`LeaseTable` is the log's lease interface (claim, renew, release, free the dead); nothing
here reads or writes an event. A route's lease is its route id; a test's claim is the
lease `test:<test key>`, which an append by its holder ends in the same transaction as the
test's event (`release_in`), leaving a completion mark (`done_seq`) that later claimers
see as DONE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from ultra.collect import liveness
from ultra.eventlog.store_tx import Tx, in_chunks, patient

__all__ = ["DONE", "TEST_LEASE_PREFIX", "LeaseTable", "release_in"]

DONE = "done"  # `claim`'s answer for a test another collector completed meanwhile
TEST_LEASE_PREFIX = "test:"  # a test's claim is the lease 'test:<test key>'


def release_in(tx: Tx, names: Sequence[str], holder: str) -> None:
    """Drop `holder`'s leases among `names` inside an open transaction (an append ends its
    tests' claims in its own group commit)."""
    for marks, part in in_chunks(list(names)):
        tx.execute(
            # never a completion mark: a retried batch (stored before) keeps its marks
            f"DELETE FROM leases WHERE holder = ? AND done_seq IS NULL AND name IN ({marks})",
            [holder, *part],
        )


class LeaseTable:
    """The lease half of an `EventLog` (a mixin: the log gives the transaction, reads and
    the clock)."""

    clock_sql: ClassVar[str]
    lock_rows_sql: ClassVar[str]
    lost_errors: ClassVar[tuple[type[Exception], ...]]
    _transaction: Callable[[], AbstractContextManager[Tx]]
    _read: Callable[..., list[Any]]

    def _held_claims(self, tx: Tx, holder: str, keys: set[str]) -> set[str]:
        """The test keys among `keys` whose claim `holder` holds (and has not completed):
        the fencing check of an append, inside its transaction."""
        names = [f"{TEST_LEASE_PREFIX}{k}" for k in keys]
        held: set[str] = set()
        for marks, part in in_chunks(names):
            held.update(r[0] for r in tx.execute(
                "SELECT name FROM leases WHERE holder = ? AND done_seq IS NULL"
                f" AND name IN ({marks}){self.lock_rows_sql}", [holder, *part]).fetchall())
        return {n[len(TEST_LEASE_PREFIX):] for n in held}

    def claim(self, name: str, holder: str, run_id: str, ttl: float, *,
              plan_seq: int = 0) -> str | None:
        """Take lease `name` for `ttl` seconds if it is free, expired or already `holder`'s.

        None when taken; otherwise why not: the run id of its holder, or DONE when the
        lease marks a test completed at a seq after `plan_seq` (the log's last seq when the
        claimer planned: it could not know). A mark at or before `plan_seq` was known to
        the planner (a retracted completion, say), so the test is taken again. `plan_seq`
        also tells `release_all` which marks a running plan may still need.
        """
        return self.claim_many([name], holder, run_id, ttl, plan_seq=plan_seq)[name]

    @patient
    def claim_many(self, names: Sequence[str], holder: str, run_id: str, ttl: float, *,
                   plan_seq: int = 0) -> dict[str, str | None]:
        """`claim` of every name in one transaction: name -> None (ours) or why not."""
        now = self.clock_sql
        host, pid, started = liveness.me()
        names = sorted(set(names))  # one lock order: two claimers of one batch never deadlock
        found: dict[str, str | None] = {}
        with self._transaction() as tx:
            tx.executemany(
                "INSERT INTO leases (name, holder, run_id, expires_at, plan_seq, host, pid, started)"
                f" VALUES (?, ?, ?, {now} + ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " run_id = excluded.run_id, expires_at = excluded.expires_at,"
                " plan_seq = excluded.plan_seq, done_seq = NULL, host = excluded.host,"
                " pid = excluded.pid, started = excluded.started"
                " WHERE (leases.done_seq IS NULL"
                f" AND (leases.holder = excluded.holder OR leases.expires_at < {now}))"
                " OR leases.done_seq <= excluded.plan_seq",
                [(name, holder, run_id, ttl, plan_seq, host, pid, started) for name in names],
            )
            for marks, part in in_chunks(names):
                for name, owner, owner_run, done_seq in tx.execute(
                    f"SELECT name, holder, run_id, done_seq FROM leases WHERE name IN ({marks})", part,
                ).fetchall():
                    found[name] = (DONE if done_seq is not None
                                   else None if owner == holder else owner_run)
        return found

    @patient
    def free_dead_holders(self) -> int:
        """Drop the leases of holders on this host whose process is gone (pid missing, or
        reused by a process started at another time): a crashed collector's routes and
        tests are free at once, not `ttl` seconds later. Holders on other hosts are left
        to their ttl. Returns how many holders were freed."""
        host = liveness.this_host()
        rows = self._read("SELECT DISTINCT holder, pid, started FROM leases"
                          " WHERE host = ? AND done_seq IS NULL AND pid IS NOT NULL", (host,))
        dead = [(holder, pid, started) for holder, pid, started in rows
                if liveness.process_gone(pid, started)]
        if not dead:
            return 0
        with self._transaction() as tx:
            for holder, pid, started in dead:
                # Only if it is still that process's: a lease taken over meanwhile stays.
                tx.execute("DELETE FROM leases WHERE holder = ? AND host = ? AND pid = ?"
                           " AND done_seq IS NULL", (holder, host, pid))
        return len(dead)

    @patient
    def renew(self, holder: str, ttl: float) -> set[str]:
        """Extend every lease of `holder` by `ttl` from now; the names it still holds."""
        with self._transaction() as tx:
            tx.execute(f"UPDATE leases SET expires_at = {self.clock_sql} + ?"
                       " WHERE holder = ? AND done_seq IS NULL", (ttl, holder))
            rows = tx.execute("SELECT name FROM leases WHERE holder = ? AND done_seq IS NULL",
                              (holder,)).fetchall()
        return {r[0] for r in rows}

    @patient
    def release(self, names: Sequence[str], holder: str) -> None:
        with self._transaction() as tx:
            release_in(tx, names, holder)

    @patient
    def release_all(self, holder: str) -> None:
        """Drop `holder`'s leases, and the completion marks no live plan predates."""
        with self._transaction() as tx:
            tx.execute("DELETE FROM leases WHERE holder = ? AND done_seq IS NULL", (holder,))
            tx.execute(
                "DELETE FROM leases WHERE done_seq IS NOT NULL AND done_seq <= COALESCE("
                f"(SELECT MIN(plan_seq) FROM leases WHERE done_seq IS NULL AND expires_at >= {self.clock_sql}),"
                " (SELECT MAX(seq) FROM events))"
            )

    def leases(self) -> list[tuple[str, str, str, float]]:
        """(name, holder, run_id, seconds left) of every held lease, expired ones included."""
        return self._read(
            f"SELECT name, holder, run_id, expires_at - {self.clock_sql} FROM leases"
            " WHERE done_seq IS NULL ORDER BY name"
        )
