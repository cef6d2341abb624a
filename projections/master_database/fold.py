"""The fold: one accumulator of sums per leaf, and its saved state."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, get_args, get_type_hints

import msgspec

from projections.columns import compiled
from projections.counting import Counting, Item, current_legacy_cells
from projections.repairs import Repairs
from ultra.events import (ERROR_CATEGORIES, WORKFLOW_METRICS, LegacyCell, LegacyImported, Outcome,
                          TestResult, Usage)
from ultra.naming import rate_key

FILE_SCHEMA_VERSION = 2  # 2: documented key order, num_instances, simulated share, tokens
STATE_VERSION = 8  # bump when Acc/FoldState change: saved states are then rebuilt
DIGITS = 6  # every float in the file is rounded to this many decimals

LeafKey = tuple[str, str, str, str, str]  # model, prompt key, rate key, difficulty, task type


def _marked_fields() -> tuple[tuple[str, str, str], ...]:
    """(field, stat name, kind) of every `TestResult` field marked with a stat (kind
    "rate" or "mean" per test): the sums an accumulator keeps besides its counts, derived
    from the schema rather than listed here."""
    hints = get_type_hints(TestResult, include_extras=True)
    out = []
    for f in msgspec.structs.fields(TestResult):
        for meta in getattr(hints[f.name], "__metadata__", ()):
            extra = getattr(meta, "extra", None) or {}
            if "stat" in extra:
                out.append((f.name, extra["stat"], extra["kind"]))
    return tuple(out)


AVERAGED: tuple[tuple[str, str, str], ...] = _marked_fields()
TOKENS: tuple[str, ...] = tuple(f.name for f in msgspec.structs.fields(Usage))  # summed as counts


class Acc(msgspec.Struct, array_like=True):
    """Sums over the counted completions of one leaf (or, merged, of a subtree)."""

    total: int = 0
    full_success: int = 0
    partial_success: int = 0
    failure: int = 0
    with_assistance: int = 0
    errors: list[int] = msgspec.field(default_factory=lambda: [0] * len(ERROR_CATEGORIES))
    execution_time: float = 0.0
    sums: list[float] = msgspec.field(default_factory=lambda: [0.0] * len(AVERAGED))  # as AVERAGED
    metrics: dict[str, float] = msgspec.field(default_factory=dict)  # the suites' own scores
    tokens: list[int] = msgspec.field(default_factory=lambda: [0] * len(TOKENS))  # as TOKENS
    last_test_time: str = ""
    simulated: int = 0  # tests answered by the bundled simulator
    truncated: int = 0  # tests with an answer cut off at the token limit (finish_reason length)
    legacy: int = 0  # tests from legacy sources (`legacy.cell`)
    cost: float = 0.0  # of the priced tests' tokens, at their run's prices (shard.started)
    priced: int = 0  # tests whose run gave their model a price
    # stat name -> tests whose legacy leaf lacked that mean: left out of its denominator
    uncovered: dict[str, int] = msgspec.field(default_factory=dict)

    def merge(self, o: Acc) -> None:
        """Add another accumulator's sums."""
        self.total += o.total
        self.full_success += o.full_success
        self.partial_success += o.partial_success
        self.failure += o.failure
        self.with_assistance += o.with_assistance
        self.execution_time += o.execution_time
        self.simulated += o.simulated
        self.truncated += o.truncated
        if o.priced:
            self.cost += o.cost
            self.priced += o.priced
        self.errors = [a + b for a, b in zip(self.errors, o.errors)]
        self.sums = [a + b for a, b in zip(self.sums, o.sums)]
        self.tokens = [a + b for a, b in zip(self.tokens, o.tokens)]
        for name, value in o.metrics.items():  # the suite's order; merges run in one order
            self.metrics[name] = self.metrics.get(name, 0.0) + value
        if o.last_test_time > self.last_test_time:
            self.last_test_time = o.last_test_time
        if o.legacy:
            self.legacy += o.legacy
            for name, n in o.uncovered.items():
                self.uncovered[name] = self.uncovered.get(name, 0) + n


class LegacySource(msgspec.Struct):
    """The current import of one legacy source and its cells (summed per leaf)."""

    import_id: str
    sha256: str
    seq: int
    recorded_at: str
    last_updated: str = ""
    declared_cells: int = 0  # what its legacy.imported says
    declared_tests: int = 0
    cells: int = 0  # legacy.cell events folded
    leaves: dict[LeafKey, Acc] = msgspec.field(default_factory=dict)


class FoldState(msgspec.Struct):
    """Everything the fold needs to continue from `last_seq`."""

    version: int = STATE_VERSION
    last_seq: int = 0
    generated_at: str = ""  # recorded_at of the last folded event
    chain_head: str = ""  # the log's hash at last_seq (set by the shell; saved with the state)
    first_event: str = ""  # event_id of the log's first event (set by the shell): which log
    duplicate_completions: int = 0
    retracted_completions: int = 0
    skipped_events: int = 0  # unknown types and undecodable rows
    errored: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)  # model -> reason -> n
    leaves: dict[LeafKey, Acc] = msgspec.field(default_factory=dict)
    # model -> tokens (as TOKENS) of every test event and preflight check: what was paid
    spent: dict[str, list[Any]] = msgspec.field(default_factory=dict)  # [p, c, r, cost, priced]
    # source -> its latest import (`ultra import-legacy`); kept apart from `leaves`
    legacy: dict[str, LegacySource] = msgspec.field(default_factory=dict)
    # "run/shard" -> (input, output) price per million tokens, from shard.started
    prices: dict[str, tuple[float, float]] = msgspec.field(default_factory=dict)
    # metric -> how it aggregates ("mean", "sum"), as the runs declared it (run.started)
    aggregates: dict[str, str] = msgspec.field(default_factory=dict)


class _LeafEntry(msgspec.Struct, array_like=True):
    key: tuple[str, str, str, str, str]
    acc: Acc


class _SavedLegacy(msgspec.Struct):
    import_id: str
    sha256: str
    seq: int
    recorded_at: str
    last_updated: str
    declared_cells: int
    declared_tests: int
    cells: int
    leaves: list[_LeafEntry]


class _SavedState(msgspec.Struct):
    version: int
    last_seq: int
    generated_at: str
    duplicate_completions: int
    retracted_completions: int
    skipped_events: int
    errored: dict[str, dict[str, int]]
    leaves: list[_LeafEntry]
    spent: dict[str, list[int | float]] = {}  # tokens stay ints, the cost a float
    legacy: dict[str, _SavedLegacy] = {}
    prices: dict[str, tuple[float, float]] = {}
    # which log the state was folded from (absent in states saved before: not checked)
    chain_head: str = ""
    first_event: str = ""
    aggregates: dict[str, str] = {}


def dump_state(state: FoldState) -> bytes:
    """JSON of the state; floats round-trip exactly, so a resumed fold sums identically."""
    saved = _SavedState(
        version=state.version,
        last_seq=state.last_seq,
        generated_at=state.generated_at,
        duplicate_completions=state.duplicate_completions,
        retracted_completions=state.retracted_completions,
        skipped_events=state.skipped_events,
        errored=state.errored,
        leaves=[_LeafEntry(k, state.leaves[k]) for k in sorted(state.leaves)],
        spent=state.spent,
        legacy={name: _SavedLegacy(
            import_id=src.import_id, sha256=src.sha256, seq=src.seq, recorded_at=src.recorded_at,
            last_updated=src.last_updated, declared_cells=src.declared_cells,
            declared_tests=src.declared_tests, cells=src.cells,
            leaves=[_LeafEntry(k, src.leaves[k]) for k in sorted(src.leaves)])
            for name, src in sorted(state.legacy.items())},
        chain_head=state.chain_head,
        first_event=state.first_event,
        prices=state.prices,
        aggregates=state.aggregates,
    )
    return msgspec.json.encode(saved)


def load_state(data: bytes | str) -> FoldState:
    saved = msgspec.json.decode(data, type=_SavedState)
    return FoldState(
        version=saved.version,
        last_seq=saved.last_seq,
        generated_at=saved.generated_at,
        duplicate_completions=saved.duplicate_completions,
        retracted_completions=saved.retracted_completions,
        skipped_events=saved.skipped_events,
        errored=saved.errored,
        leaves={tuple(e.key): e.acc for e in saved.leaves},  # type: ignore[misc]
        spent=saved.spent,
        legacy={name: LegacySource(
            import_id=src.import_id, sha256=src.sha256, seq=src.seq, recorded_at=src.recorded_at,
            last_updated=src.last_updated, declared_cells=src.declared_cells,
            declared_tests=src.declared_tests, cells=src.cells,
            leaves={tuple(e.key): e.acc for e in src.leaves})  # type: ignore[misc]
            for name, src in saved.legacy.items()},
        chain_head=saved.chain_head,
        first_event=saved.first_event,
        prices={k: tuple(v) for k, v in saved.prices.items()},  # type: ignore[misc]
        aggregates=saved.aggregates,
    )


# ---- the fold --------------------------------------------------------------------------


# While folding, each leaf's sums live in a flat list (a "working record"), made from its
# `Acc` when first touched and turned back into one at the end: the loop then costs one
# dict probe and a few list slots per completion, not a method call and attribute writes.
# The slots, in order: the place in `Acc` each comes from and goes back to, and the
# statement that adds one counted completion to it (`e` the event, `r` its result, `u` its
# usage, `w` the record, `{i}` the slot). They follow the schema: an outcome, an error
# category, a field of `TestResult` marked with a stat or a field of `Usage` has its slot
# without an edit here. `fold`'s loop is compiled from them (plain bytecode per slot).
_SLOTS: tuple[tuple[str, str], ...] = (
    *((o, "") for o in get_args(Outcome)),  # one of them per completion (`_ONE_OF` below)
    ("with_assistance", "if r.assisted_turns:\n    w[{i}] += 1"),
    ("simulated", "if e.simulated:\n    w[{i}] += 1"),
    ("execution_time", "w[{i}] += e.execution_time"),
    *((f"sums[{k}]", f"w[{{i}}] += r.{name}") for k, (name, _, _) in enumerate(AVERAGED)),
    *((f"tokens[{k}]", f"w[{{i}}] += u.{name}") for k, name in enumerate(TOKENS)),
    ("metrics", "m = w[{i}]  # a defaultdict(float): a new name starts at 0.0\n"
                "for name, value in r.metrics.items():\n    m[name] += value"),
    ("last_test_time", "if e.recorded_at > w[{i}]:\n    w[{i}] = e.recorded_at"),
    ("truncated", "if r.finish_reasons and 'length' in r.finish_reasons:\n    w[{i}] += 1"),
    ("cost", ""), ("priced", ""),  # where the completion's run has prices (`_PRICED`)
    *((f"errors[{k}]", "") for k in range(len(ERROR_CATEGORIES))),  # `_ONE_OF`
)
_SLOT = {place: i for i, (place, _) in enumerate(_SLOTS)}
_OUTCOME_SLOT = {o: _SLOT[o] for o in get_args(Outcome)}
_ERROR_SLOT = {c: _SLOT[f"errors[{k}]"] for k, c in enumerate(ERROR_CATEGORIES)}
_ONE_OF = ("w[outcome_slot[r.outcome]] += 1  # total is their sum, made at the end",
           "category = r.error_category",
           "if category is not None:\n    w[error_slot[category]] += 1")
_PRICED = ("if prices:\n    price = prices.get(e.run_id + '/' + e.shard_id)\n    if price is not None:\n"
           f"        w[{_SLOT['cost']}] += (u.prompt_tokens * price[0] + u.completion_tokens * price[1]) / 1e6\n"
           f"        w[{_SLOT['priced']}] += 1",)


def _fold_source() -> tuple[str, str, str]:
    """The source of `_open` (Acc -> record), `_close` (record -> Acc) and `_fold_loop`."""
    lists: dict[str, list[int]] = {}
    opened, closed = [], {"total": " + ".join(f"w[{_OUTCOME_SLOT[o]}]" for o in get_args(Outcome))}
    for i, (place, _) in enumerate(_SLOTS):
        attr, _, k = place.partition("[")
        opened.append("defaultdict(float, a.metrics)" if place == "metrics" else f"a.{place}")
        if k:
            lists.setdefault(attr, []).append(i)
        else:
            closed[attr] = f"dict(w[{i}])" if place == "metrics" else f"w[{i}]"
    closed.update((attr, "[" + ", ".join(f"w[{i}]" for i in slots) + "]") for attr, slots in lists.items())
    left = set(Acc.__struct_fields__) - set(closed) - {"legacy", "uncovered"}  # legacy: apart
    if left:
        raise TypeError(f"fields of Acc without a slot in _SLOTS: {sorted(left)}")
    open_src = "def _open(a):\n    return [\n" + "".join(f"        {x},\n" for x in opened) + "    ]\n"
    close_src = "def _close(w):\n    return Acc(\n" + "".join(
        f"        {attr}={x},\n" for attr, x in closed.items()) + "    )\n"
    body = [add.format(i=i) for i, (_, add) in enumerate(_SLOTS) if add] + [*_ONE_OF, *_PRICED]
    indent = " " * 12
    loop_src = (
        "def _fold_loop(events, work, leaves, errored, prices):\n"
        "    outcome_slot, error_slot, open_ = OUTCOME_SLOT, ERROR_SLOT, _open\n"
        "    for _seq, e, model, rk in events:\n"
        "        if rk:  # a counted completion (errored events have no rate key)\n"
        "            key = (model, e.prompt_type, rk, e.difficulty, e.task_type)\n"
        "            w = work.get(key)\n"
        "            if w is None:\n"
        "                acc = leaves.get(key)\n"
        "                w = work[key] = open_(acc if acc is not None else Acc())\n"
        "            r = e.result\n"
        "            u = e.usage\n"
        + "".join(indent + line + "\n" for stmt in body for line in stmt.splitlines())
        + "        else:\n"
        "            by_reason = errored.setdefault(model, {})\n"
        "            by_reason[e.reason] = by_reason.get(e.reason, 0) + 1\n")
    return open_src, close_src, loop_src


_open_src, _close_src, _loop_src = _fold_source()
_ns: dict[str, Any] = {"Acc": Acc, "defaultdict": defaultdict, "OUTCOME_SLOT": _OUTCOME_SLOT,
                       "ERROR_SLOT": _ERROR_SLOT}
_open = _ns["_open"] = compiled("_open", _open_src, _ns)
_close = compiled("_close", _close_src, _ns)
_fold_loop = compiled("_fold_loop", _loop_src, _ns)


def fold(state: FoldState, items: Iterable[Item], repairs: Repairs) -> int:
    """Fold `items` (in seq order) into `state`, which it updates; returns items folded.

    What counts is decided by `projections.counting`; `test.errored` is counted per model
    and reason, outside the success statistics. Every sum adds one completion at a time in
    seq order, so a resumed fold sums exactly as a fold from zero.
    """
    leaves = state.leaves
    work: dict[LeafKey, list[Any]] = {}
    counting = Counting(repairs, state.spent, state.prices)
    counting.legacy = []
    counting.aggregates = state.aggregates
    counting.last_recorded_at = state.generated_at
    try:  # prices: filled by shard.started events as the fold meets them
        _fold_loop(counting.events(items), work, leaves, state.errored, state.prices)
    finally:
        for key, w in work.items():
            leaves[key] = _close(w)
        state.duplicate_completions += counting.duplicates
        state.retracted_completions += counting.retracted
        state.generated_at = counting.last_recorded_at
        if counting.legacy:
            fold_legacy(state, counting.legacy, repairs.canonical)
    return counting.folded


UNPLACED = "all"  # a dimension a legacy file does not place (version 2.0: per-model totals)
# A legacy cell's `sums` -> the mean it feeds ("stat name" in the rendered stats)
_LEGACY_MEANS = {**{f: stat for f, stat, _ in AVERAGED}, "execution_time": "avg_execution_time"}
_LEGACY_METRICS = WORKFLOW_METRICS


def legacy_key(e: LegacyCell, model: str) -> LeafKey:
    rk = UNPLACED if e.tool_success_rate is None else rate_key(e.tool_success_rate)
    return (model, e.prompt_type, rk, e.difficulty, e.task_type)


def legacy_acc(e: LegacyCell) -> Acc:
    """A legacy cell as an accumulator: its counts, and its averages as sums over its
    tests (a mean the leaf lacks is `uncovered`: its tests stay out of that denominator)."""
    t = e.total
    sums = e.sums
    uncovered = {stat: t for f, stat in _LEGACY_MEANS.items() if f not in sums}
    metrics = {m: sums[m] for m in (*_LEGACY_METRICS, *sorted(sums)) if m in sums
               and m not in _LEGACY_MEANS}
    uncovered.update((f"avg_{m}", t) for m in _LEGACY_METRICS if m not in sums)
    return Acc(total=t, full_success=e.full_success, partial_success=e.partial_success,
               failure=e.failure, with_assistance=e.tests_with_assistance,
               errors=[e.errors.get(c, 0) for c in ERROR_CATEGORIES],
               execution_time=sums.get("execution_time", 0.0),
               sums=[sums.get(f, 0.0) for f, _, _ in AVERAGED], metrics=metrics,
               legacy=t, uncovered=uncovered if t else {})


def fold_legacy(state: FoldState, items: list, canonical: Any) -> None:
    """Fold legacy imports and cells (in seq order): a new import of a source replaces the
    source's cells (the latest import wins); a superseded import's cells are dropped."""
    current = {name: src.import_id for name, src in state.legacy.items()}
    for seq, e in current_legacy_cells(items, current):
        if type(e) is LegacyImported:
            state.legacy[e.source] = LegacySource(
                import_id=e.event_id, sha256=e.sha256, seq=seq, recorded_at=e.recorded_at,
                last_updated=e.last_updated, declared_cells=e.cells, declared_tests=e.tests)
            continue
        src = state.legacy[e.source]  # type: ignore[union-attr]
        key = legacy_key(e, canonical(e.model))  # type: ignore[arg-type]
        acc = legacy_acc(e)  # type: ignore[arg-type]
        if key in src.leaves:
            src.leaves[key].merge(acc)
        else:
            src.leaves[key] = acc
        src.cells += 1


def all_leaves(state: FoldState) -> dict[LeafKey, Acc]:
    """The collected leaves, with the current legacy cells added in (sources in name
    order): what master_database.json counts (it is cumulative)."""
    if not state.legacy:
        return state.leaves
    out = {k: sum_accs([a]) for k, a in state.leaves.items()}
    for name in sorted(state.legacy):
        for key, acc in sorted(state.legacy[name].leaves.items()):
            if key in out:
                out[key].merge(acc)
            else:
                out[key] = sum_accs([acc])
    return out


def sum_accs(accs: Iterable[Acc]) -> Acc:
    total = Acc()
    for a in accs:
        total.merge(a)
    return total


Tree = dict[str, dict[str, dict[str, dict[str, dict[str, Acc]]]]]  # model > ... > task > leaf


__all__ = ["AVERAGED", "Acc", "DIGITS", "FILE_SCHEMA_VERSION", "FoldState", "LeafKey", "LegacySource", "STATE_VERSION", "TOKENS", "Tree", "UNPLACED", "all_leaves", "dump_state", "fold", "fold_legacy", "legacy_acc", "legacy_key", "load_state", "sum_accs"]
