"""Repairs are events: the alias table and retraction selectors, applied retroactively.

The one home of alias resolution and selector matching; the projection, the audit and the
resume planner (`ultra.runner.completed_test_keys`) all ask here.

A retraction removes matching completions *recorded before it* (by `recorded_at`, not by
`seq`), so logs merged with `ultra import` give the same result in any import order.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from ultra.events import AliasDefined, Event, Selector, TestCompleted, TestsRetracted
from ultra.naming import canonical_model

REPAIR_TYPES: tuple[str, ...] = ("alias.defined", "tests.retracted")


class Retraction(msgspec.Struct, frozen=True):
    seq: int
    recorded_at: str
    selector: Selector
    model: str | None  # the selector's model, canonical under the final alias table
    test_keys: frozenset[str] | None


class Repairs:
    """The final alias table (later definitions win) and all retractions."""

    def __init__(self, aliases: dict[str, str], retractions: list[Retraction]) -> None:
        self.aliases = aliases
        self.retractions = retractions
        self._canonical: dict[str, str] = {}

    def canonical(self, name: str) -> str:
        """`canonical_model` under this alias table, memoized (it runs once per event)."""
        got = self._canonical.get(name)
        if got is None:
            got = self._canonical[name] = canonical_model(name, self.aliases)
        return got

    def retracts(self, event: TestCompleted, model: str | None = None) -> bool:
        """Whether any retraction removes this completion (`model`: its canonical name)."""
        if not self.retractions:
            return False
        if model is None:
            model = self.canonical(event.model)
        return any(_matches(r, event, model) for r in self.retractions)


def _matches(r: Retraction, e: TestCompleted, model: str) -> bool:
    s = r.selector
    return (
        e.recorded_at < r.recorded_at
        and (r.model is None or model == r.model)
        and (s.run_id is None or e.run_id == s.run_id)
        and (s.shard_id is None or e.shard_id == s.shard_id)
        and (s.instance is None or e.instance == s.instance)
        and (r.test_keys is None or e.test_key in r.test_keys)
        and (s.recorded_before is None or e.recorded_at < s.recorded_before)
        and (s.recorded_after is None or e.recorded_at > s.recorded_after)
    )


def collect_repairs(items: Iterable[tuple[int, Event]]) -> Repairs:
    """The repairs among `(seq, event)` pairs in `seq` order (other events are ignored)."""
    aliases: dict[str, str] = {}
    pending: list[tuple[int, TestsRetracted]] = []
    for seq, event in items:
        if isinstance(event, AliasDefined):
            aliases[event.alias.strip()] = event.canonical.strip()
        elif isinstance(event, TestsRetracted):
            pending.append((seq, event))
    retractions = [
        Retraction(
            seq=seq,
            recorded_at=e.recorded_at,
            selector=e.selector,
            model=None if e.selector.model is None else canonical_model(e.selector.model, aliases),
            test_keys=None if e.selector.test_keys is None else frozenset(e.selector.test_keys),
        )
        for seq, e in pending
    ]
    return Repairs(aliases, retractions)
