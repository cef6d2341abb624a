"""Reading the log for a projection: the repairs it applies, whether a saved projection
came from this log, and the collector paused while a fold allocates."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

from projections.repairs import REPAIR_TYPES, Repairs, collect_repairs
from ultra.eventlog.store import EventLog


def log_repairs(log: EventLog, until_seq: int | None = None) -> Repairs:
    """The alias table and retractions stored up to `until_seq` (few events)."""
    return collect_repairs(log.stream(until_seq=until_seq, types=REPAIR_TYPES))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """A fold allocates millions of short-lived objects and makes no cycles: the cyclic
    collector only costs time there (~8 % of a replay, tools/bench_replay.py)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def other_log(log: EventLog, last_seq: int, chain_head: str, first_event: str) -> str | None:
    """Why a projection that says it folded `last_seq` events with `chain_head` (and the
    first event `first_event`) was not folded from `log` (None if it may have been: the
    same history up to `last_seq`). Identities a projection did not record are not checked."""
    if last_seq <= 0:
        return None  # nothing folded yet: any log's events are new to it
    if chain_head and log.chain_head(last_seq) != chain_head:
        return f"its chain head at seq {last_seq} is not this log's"
    if first_event and log.first_event_id() != first_event:
        return "its first event is not this log's"
    return None


def say_rebuilt(what: str, why: str, log: EventLog) -> None:
    print(f"ultra: note: {what} was folded from another event log ({why}); rebuilding it"
          f" from {getattr(log, 'location', None) or 'this log'}", file=sys.stderr)


__all__ = ["gc_paused", "log_repairs", "other_log", "say_rebuilt"]
