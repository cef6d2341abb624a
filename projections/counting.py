"""Which events count: the rules every projection of test results shares, in one place.

A `test.completed` counts unless a retraction removes it or an earlier, unretracted
completion of its test key is stored (duplicates count once). `test.errored` never enters
success statistics; projections count it apart. Model names are canonical (aliases,
instances) and rates are spelled as keys here, once, for every projection.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from projections.repairs import Repairs
from ultra.events import (
    Event,
    LegacyCell,
    LegacyImported,
    WORKFLOW_METRICS,
    RouteChecked,
    RunStarted,
    ShardStarted,
    TestCompleted,
    TestErrored,
)
from ultra.naming import rate_key

Item = tuple[int, Event, Sequence[TestCompleted]]  # seq, event, earlier completions of its key
Counted = tuple[int, Event, str, str]  # seq, event, canonical model, rate key ("" if errored)


class Counting:
    """Filters a stream of items down to what projections fold, tallying what it drops."""

    def __init__(self, repairs: Repairs, spent: dict[str, list[float]] | None = None,
                 prices: dict[str, tuple[float, float]] | None = None) -> None:
        self.repairs = repairs
        # model -> [prompt, completion, reasoning] tokens of every test event and preflight
        # check, counted or not (a duplicate or retracted test was paid for all the same)
        self.spent = spent
        # "run/shard" -> prices per million tokens (shard.started), to price what was spent
        self.prices = prices
        self.folded = 0  # items seen
        self.duplicates = 0
        self.retracted = 0
        self.last_recorded_at = ""  # of the last item seen ("" if none)
        # (seq, event) of the legacy imports and cells seen, when a projection asks for them
        # (a list): they are few, and folded apart from the tests (`legacy_events`)
        self.legacy: list[tuple[int, Event]] | None = None
        # metric -> how it aggregates, from the runs' declarations, when a projection asks
        # (a dict; `declare`)
        self.aggregates: dict[str, str] | None = None

    def events(self, items: Iterable[Item]) -> Iterator[Counted]:
        """Counted completions and every `test.errored`, in the order given."""
        repairs = self.repairs
        canonical = repairs.canonical
        retracts = repairs.retracts if repairs.retractions else None
        models: dict[str, str] = {}  # raw name -> canonical: a subscript, not a call per event
        rate_keys: dict[float, str] = {}
        spent = self.spent
        prices = self.prices
        n = 0
        e: Event | None = None
        try:
            for seq, e, earlier in items:
                n += 1
                kind = type(e)
                if kind is TestCompleted:
                    try:
                        model = models[e.model]  # type: ignore[union-attr]
                    except KeyError:
                        model = models[e.model] = canonical(e.model)  # type: ignore[union-attr]
                    u = e.usage  # type: ignore[union-attr]
                    # inline, as `_spend`: the hot path of every completion. A test that cost
                    # nothing lists no model (a model whose only tests repeat others' is not one)
                    if spent is not None and (u.prompt_tokens or u.completion_tokens or u.reasoning_tokens):
                        t = spent.get(model)
                        if t is None:
                            t = spent[model] = [0, 0, 0, 0.0, 0]
                        t[0] += u.prompt_tokens
                        t[1] += u.completion_tokens
                        t[2] += u.reasoning_tokens
                        if prices:
                            _price(t, e, prices)
                    if retracts is not None and retracts(e, model):  # type: ignore[arg-type]
                        self.retracted += 1
                        continue
                    if earlier and any(not repairs.retracts(p) for p in earlier):
                        self.duplicates += 1
                        continue
                    try:
                        rk = rate_keys[e.tool_success_rate]  # type: ignore[union-attr]
                    except KeyError:
                        rk = rate_keys[e.tool_success_rate] = rate_key(e.tool_success_rate)  # type: ignore[union-attr]
                    yield seq, e, model, rk
                elif kind is TestErrored:
                    model = canonical(e.model)  # type: ignore[union-attr]
                    if spent is not None:
                        _spend(spent, model, e, prices)
                    yield seq, e, model, ""
                elif kind is RouteChecked and spent is not None:
                    p = e.prices  # type: ignore[union-attr]
                    _spend(spent, canonical(e.model), e,  # type: ignore[union-attr]
                           {f"{e.run_id}/{e.shard_id}": (p.input, p.output)} if p else prices)
                elif kind is ShardStarted and prices is not None and e.prices is not None:  # type: ignore[union-attr]
                    p = e.prices  # type: ignore[union-attr]
                    prices[f"{e.run_id}/{e.shard_id}"] = (p.input, p.output)  # type: ignore[union-attr]
                elif (kind is LegacyCell or kind is LegacyImported) and self.legacy is not None:
                    self.legacy.append((seq, e))
                elif kind is RunStarted and self.aggregates is not None and e.metrics:  # type: ignore[union-attr]
                    declare(self.aggregates, e)  # type: ignore[arg-type]
        finally:
            self.folded += n
            if e is not None:
                self.last_recorded_at = e.recorded_at


def _spend(spent: dict[str, list[float]], model: str, e: Any,
           prices: dict[str, tuple[float, float]] | None) -> None:
    """Add an event's tokens to its model's: [prompt, completion, reasoning, cost, priced]
    (cost and priced only where its run gave the model prices)."""
    u = e.usage
    if u.prompt_tokens or u.completion_tokens or u.reasoning_tokens:
        t = spent.get(model)
        if t is None:
            t = spent[model] = [0, 0, 0, 0.0, 0]
        t[0] += u.prompt_tokens
        t[1] += u.completion_tokens
        t[2] += u.reasoning_tokens
        if prices:
            _price(t, e, prices)


def _price(t: list[float], e: Any, prices: dict[str, tuple[float, float]]) -> None:
    """Add the cost of an event's tokens to `t`, where its run priced its shard."""
    price = prices.get(f"{e.run_id}/{e.shard_id}")
    if price is not None:
        u = e.usage
        t[3] += (u.prompt_tokens * price[0] + u.completion_tokens * price[1]) / 1e6
        t[4] += 1


def declare(aggregates: dict[str, str], e: RunStarted) -> list[str]:
    """Add a run's metric declarations to `aggregates` (metric -> "mean" | "sum"); returns
    the names new to it. The first declaration of a name in the log holds, and the workflow
    suite's metrics are means whatever a log says (their columns and legacy files are)."""
    new = []
    for m in e.metrics:
        if m.name not in aggregates:
            aggregates[m.name] = "mean" if m.name in WORKFLOW_METRICS else m.aggregate
            new.append(m.name)
    return new


def current_legacy_cells(legacy: Iterable[tuple[int, Event]], current: dict[str, str]
                         ) -> Iterator[tuple[int, Event]]:
    """The legacy events that count, in order: every `legacy.imported` (it makes its import
    the source's current one, in `current`: source -> import event id) and the cells of a
    source's current import. A cell of an import that a later one superseded is dropped:
    the latest import of a source wins."""
    for seq, e in legacy:
        if type(e) is LegacyImported:
            current[e.source] = e.event_id
            yield seq, e
        elif current.get(e.source) == e.import_id:  # type: ignore[union-attr]
            yield seq, e


__all__ = ["Counted", "Counting", "current_legacy_cells", "declare", "Item"]
