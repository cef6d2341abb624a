"""Projection state: what a projection saved of its fold (version, the last `seq` it
read, its state as JSON), in the log's own database (`projection_state`), so a replay goes
on from where the last one stopped. The projection side's table: the log only gives the
reads and the locked transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ultra.eventlog.store_tx import patient

if TYPE_CHECKING:
    from ultra.eventlog.store import EventLog

__all__ = ["load_projection_state", "save_projection_state"]


def load_projection_state(log: EventLog, name: str) -> tuple[int, int, str] | None:
    """(version, last_seq, state JSON) saved for projection `name`, if any."""
    rows = log.read("SELECT version, last_seq, state FROM projection_state WHERE name = ?", (name,))
    return tuple(rows[0]) if rows else None  # type: ignore[return-value]


@patient
def save_projection_state(log: EventLog, name: str, version: int, last_seq: int, state: str) -> bool:
    """Save a state unless one at least as far along is already there (racing projectors)."""
    with log.locked() as tx:  # racing projectors: one saves at a time
        row = tx.execute("SELECT last_seq, version FROM projection_state WHERE name = ?",
                         (name,)).fetchone()
        if row is None:
            tx.execute("INSERT INTO projection_state (name, version, last_seq, state)"
                       " VALUES (?, ?, ?, ?)", (name, version, last_seq, state))
        elif row[0] <= last_seq or row[1] != version:
            tx.execute("UPDATE projection_state SET version = ?, last_seq = ?, state = ?"
                       " WHERE name = ?", (version, last_seq, state, name))
        else:
            return False
    return True
