"""Repairs are events: the alias table and retraction selectors, applied retroactively.

The one home of alias resolution and selector matching; the projection, the audit and the
resume planner (`ultra.collect.resume.completed_test_keys`) all ask here.

A retraction withdraws the completions it lists by event id, resolved from its selector
when it was made (`match_selector`); what it hides cannot change with clock skew or the
order in which logs are merged. A version-1 retraction (selector only) withdraws nothing;
`ultra audit` notes it, and `ultra repair retract` re-issues it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ultra.events import AliasDefined, Event, Selector, TestCompleted, TestsRetracted
from ultra.naming import canonical_model

REPAIR_TYPES: tuple[str, ...] = ("alias.defined", "tests.retracted")


class Repairs:
    """The final alias table (later definitions win) and all withdrawn completions."""

    def __init__(self, aliases: dict[str, str], withdrawn: set[str], legacy: int = 0) -> None:
        self.aliases = aliases
        self.withdrawn = withdrawn  # event ids of withdrawn test.completed events
        self.legacy_retractions = legacy  # version-1 retractions, which withdraw nothing
        self._canonical: dict[str, str] = {}

    @property
    def retractions(self) -> bool:
        return bool(self.withdrawn)

    def canonical(self, name: str) -> str:
        """`canonical_model` under this alias table, memoized (it runs once per event)."""
        got = self._canonical.get(name)
        if got is None:
            got = self._canonical[name] = canonical_model(name, self.aliases)
        return got

    def retracts(self, event: TestCompleted, model: str | None = None) -> bool:
        """Whether a retraction withdraws this completion (`model` is unused: kept so
        callers that know the canonical name need not care)."""
        return event.event_id in self.withdrawn


def match_selector(selector: Selector, event: TestCompleted, model: str, aliases: dict[str, str]) -> bool:
    """Whether a completion (canonical `model`) matches a retraction's selector."""
    s = selector
    return (
        (s.model is None or model == canonical_model(s.model, aliases))
        and (s.run_id is None or event.run_id == s.run_id)
        and (s.shard_id is None or event.shard_id == s.shard_id)
        and (s.instance is None or event.instance == s.instance)
        and (s.test_keys is None or event.test_key in s.test_keys)
        and (s.recorded_before is None or event.recorded_at < s.recorded_before)
        and (s.recorded_after is None or event.recorded_at > s.recorded_after)
    )


def resolve_retraction(selector: Selector, completions: Iterable[TestCompleted],
                       repairs: Repairs) -> list[str]:
    """Event ids of the completions a new retraction withdraws: those matching `selector`
    that no earlier retraction withdrew, in the order given (the log's)."""
    return [
        e.event_id
        for e in completions
        if e.event_id not in repairs.withdrawn
        and match_selector(selector, e, repairs.canonical(e.model), repairs.aliases)
    ]


def collect_repairs(items: Iterable[tuple[int, Event]]) -> Repairs:
    """The repairs among `(seq, event)` pairs in `seq` order (other events are ignored)."""
    aliases: dict[str, str] = {}
    withdrawn: set[str] = set()
    legacy = 0
    for _seq, event in items:
        if isinstance(event, AliasDefined):
            aliases[event.alias.strip()] = event.canonical.strip()
        elif isinstance(event, TestsRetracted):
            if event.withdraws:
                withdrawn.update(event.withdraws)
            else:
                legacy += 1
    return Repairs(aliases, withdrawn, legacy)


__all__ = ["collect_repairs", "match_selector", "REPAIR_TYPES", "Repairs", "resolve_retraction"]
