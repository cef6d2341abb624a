"""master_database.json: a pure fold of the event stream, and its rendering.

The fold state holds one accumulator of sums per leaf (model, prompt type, tool success
rate, difficulty, task type), so memory grows with leaves, not events. Every level's
`overall_stats` is computed from summed accumulators, never from averages of rates.

The shell (`ultra.projection.projecting`) feeds the fold `(seq, event, earlier)` items, where
`earlier` holds the stored completions of the same test key with a smaller seq (usually
none; found with an index probe), so duplicate completions count once without keeping a
set of every key in memory.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, get_args, get_type_hints

import msgspec

from projections.counting import Counting, Item, current_legacy_cells
from projections.repairs import Repairs
from ultra import __version__
from ultra.events import ERROR_CATEGORIES, LegacyCell, LegacyImported, Outcome, TestResult, Usage
from ultra.naming import rate_key

FILE_SCHEMA_VERSION = 2  # 2: documented key order, num_instances, simulated share, tokens
STATE_VERSION = 7  # bump when Acc/FoldState change: saved states are then rebuilt
DIGITS = 6  # every float in the file is rounded to this many decimals

LeafKey = tuple[str, str, str, str, str]  # model, prompt key, rate key, difficulty, task type

_CATEGORY_INDEX = {c: i for i, c in enumerate(ERROR_CATEGORIES)}


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
    )


# ---- the fold --------------------------------------------------------------------------


# While folding, each leaf's sums live in a flat list (a "working record"), made from its
# `Acc` when first touched and turned back into one at the end: the loop then costs one
# dict probe and a few list slots per completion, not a method call and attribute writes.
# `fold` spells the slots as literals (the hot loop):
#   0 unused (total is 1 + 2 + 3), 1 full_success, 2 partial_success, 3 failure, 4 with_assistance, 5 simulated,
#   6 execution_time, 7-9 sums (AVERAGED), 10-12 tokens (TOKENS), 13 metrics, 14 last_test_time,
#   15 truncated, 16 cost, 17 priced, then one count per error category (ERROR_CATEGORIES).
_ERRORS = 18
_OUTCOME_SLOT = {o: {"full_success": 1, "partial_success": 2}.get(o, 3) for o in get_args(Outcome)}
_ERROR_SLOT = {c: _ERRORS + i for i, c in enumerate(ERROR_CATEGORIES)}
# `fold` adds these by name: plain bytecode, twice as fast as a C map of `operator.add`.
if tuple(f for f, _, _ in AVERAGED) != ("turns", "tool_calls", "tool_coverage") or TOKENS != (
    "prompt_tokens", "completion_tokens", "reasoning_tokens"
):
    raise TypeError("the stat marks of TestResult or the fields of Usage changed: update fold()")


def _open(a: Acc) -> list[Any]:
    return [a.total, a.full_success, a.partial_success, a.failure, a.with_assistance, a.simulated,
            a.execution_time, *a.sums, *a.tokens, defaultdict(float, a.metrics), a.last_test_time,
            a.truncated, a.cost, a.priced, *a.errors]


def _close(w: list[Any]) -> Acc:
    return Acc(total=w[1] + w[2] + w[3], full_success=w[1], partial_success=w[2], failure=w[3],
               with_assistance=w[4], errors=w[_ERRORS:], execution_time=w[6], sums=w[7:10],
               metrics=dict(w[13]), tokens=w[10:13], last_test_time=w[14], simulated=w[5],
               truncated=w[15], cost=w[16], priced=w[17])


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
    prices = state.prices  # filled by shard.started events as the fold meets them
    counting.last_recorded_at = state.generated_at
    outcome_slot, error_slot = _OUTCOME_SLOT, _ERROR_SLOT
    try:
        for _seq, e, model, rk in counting.events(items):
            if rk:  # a counted completion (errored events have no rate key)
                key = (model, e.prompt_type, rk, e.difficulty, e.task_type)
                w = work.get(key)
                if w is None:
                    acc = leaves.get(key)
                    w = work[key] = _open(acc if acc is not None else Acc())
                r = e.result
                w[outcome_slot[r.outcome]] += 1  # total is their sum, made at the end
                if r.assisted_turns:
                    w[4] += 1
                if e.simulated:
                    w[5] += 1
                category = r.error_category
                if category is not None:
                    w[error_slot[category]] += 1
                w[6] += e.execution_time
                w[7] += r.turns
                w[8] += r.tool_calls
                w[9] += r.tool_coverage
                u = e.usage
                w[10] += u.prompt_tokens
                w[11] += u.completion_tokens
                w[12] += u.reasoning_tokens
                metrics = w[13]  # a defaultdict(float): a new name starts at 0.0
                for name, value in r.metrics.items():
                    metrics[name] += value
                if e.recorded_at > w[14]:
                    w[14] = e.recorded_at
                if r.finish_reasons and "length" in r.finish_reasons:
                    w[15] += 1
                if prices:
                    price = prices.get(f"{e.run_id}/{e.shard_id}")
                    if price is not None:
                        w[16] += (u.prompt_tokens * price[0] + u.completion_tokens * price[1]) / 1e6
                        w[17] += 1
            else:
                by_reason = state.errored.setdefault(model, {})
                by_reason[e.reason] = by_reason.get(e.reason, 0) + 1  # type: ignore[union-attr]
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
_LEGACY_METRICS = ("final_score", "workflow_score", "phase2_score", "quality_score")


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
    out = {k: _sum([a]) for k, a in state.leaves.items()}
    for name in sorted(state.legacy):
        for key, acc in sorted(state.legacy[name].leaves.items()):
            if key in out:
                out[key].merge(acc)
            else:
                out[key] = _sum([acc])
    return out


# ---- rendering -------------------------------------------------------------------------


# The names `stats` gives its per-test shares, in its key order (metrics apart).
_RATE_NAMES = ("success_rate", "full_success_rate", "partial_rate", "failure_rate",
               "weighted_success_score", *(stat for _, stat, kind in AVERAGED if kind == "rate"),
               "assistance_rate", "truncation_rate")
_RATE_SUMS = tuple(i for i, (_, _, kind) in enumerate(AVERAGED) if kind == "rate")
_MEAN_NAMES = (*(stat for _, stat, kind in AVERAGED if kind == "mean"), "avg_execution_time")
_MEAN_SUMS = tuple(i for i, (_, _, kind) in enumerate(AVERAGED) if kind == "mean")
_ERROR_NAMES = tuple((f"{c}_errors", f"{c}_error_rate") for c in ERROR_CATEGORIES)


def stats(a: Acc, digits: int | None = DIGITS, legacy: bool = False) -> dict[str, Any]:
    """Leaf stats of an accumulator: one name per quantity, the same at every level.

    Key order (docs/master_database.md): `total`; the rates; the counts; the means; then
    the error categories, each count beside its rate. Every share is `x / total`, rounded
    to `digits` (0.0 when there are no tests), computed in one list for speed.
    """
    t = a.total
    full, partial, failure, assisted = a.full_success, a.partial_success, a.failure, a.with_assistance
    success = full + partial
    sums, metrics, errors = a.sums, a.metrics, a.errors
    summed = [success, full, partial, failure, full + 0.5 * partial,
              *[sums[i] for i in _RATE_SUMS], assisted, a.truncated,
              *metrics.values(), *[sums[i] for i in _MEAN_SUMS], a.execution_time, *errors]
    if not t:
        shares = [0.0] * len(summed)
    elif digits is None:
        shares = [x / t for x in summed]
    else:
        shares = [round(x / t, digits) for x in summed]
    out: dict[str, Any] = {"total": t}
    if legacy:  # only in the files of logs with legacy imports: the others keep their bytes
        out["legacy_tests"] = a.legacy
    # rates: shares of `total`
    out.update(zip(_RATE_NAMES, shares))
    # counts: they add up across levels
    out["success"] = success
    out["full_success"] = full
    out["partial_success"] = partial
    out["failure"] = failure
    out["tests_with_assistance"] = assisted
    out["tests_truncated"] = a.truncated  # an answer cut off at the token limit (length)
    if a.priced:  # only where prices are known: a log without them keeps its bytes
        out["cost"] = round(a.cost, digits) if digits is not None else a.cost
        out["priced_tests"] = a.priced
    out.update(zip(TOKENS, a.tokens))  # sums, like the counts: children add up to them
    # means per test: the suite's metrics (in its order), then the marked result fields
    at = len(_RATE_NAMES)
    out.update(zip([f"avg_{name}" for name in metrics], shares[at:]))
    at += len(metrics)
    out.update(zip(_MEAN_NAMES, shares[at:]))
    at += len(_MEAN_NAMES)
    # error categories: exactly one per test that is not a full success
    out["total_errors"] = sum(errors)
    for (count_name, rate_name), count, share in zip(_ERROR_NAMES, errors, shares[at:]):
        out[count_name] = count
        out[rate_name] = share  # share of all tests, like every *_rate
    if a.uncovered:
        _uncovered_means(a, out, digits)
    return out


def _uncovered_means(a: Acc, out: dict[str, Any], digits: int | None) -> None:
    """Means over the tests that have them: legacy leaves that lacked a mean leave their
    tests out of its denominator."""
    raw = {stat: a.sums[i] for i, (_, stat, _) in enumerate(AVERAGED)}
    raw["avg_execution_time"] = a.execution_time
    raw.update((f"avg_{m}", v) for m, v in a.metrics.items())
    for name, n in a.uncovered.items():
        if name in out and name in raw:
            covered = a.total - n
            x = raw[name] / covered if covered > 0 else 0.0
            out[name] = x if digits is None else round(x, digits)


def _sum(accs: Iterable[Acc]) -> Acc:
    total = Acc()
    for a in accs:
        total.merge(a)
    return total


Tree = dict[str, dict[str, dict[str, dict[str, dict[str, Acc]]]]]  # model > ... > task > leaf


def _tree(state: FoldState) -> Tree:
    tree: Tree = {}
    # Sorted, so float sums run in one order however the state was built or loaded.
    leaves = all_leaves(state)
    for key in sorted(leaves):
        model, prompt, rk, diff, task = key
        acc = leaves[key]
        tree.setdefault(model, {}).setdefault(prompt, {}).setdefault(rk, {}).setdefault(diff, {})[
            task
        ] = acc
    return tree


def _spent(spent: list[float] | None) -> dict[str, float]:
    """A `tokens_spent` block: the tokens, and their cost where the run priced them."""
    out: dict[str, float] = dict(zip(TOKENS, spent[:3] if spent else [0] * len(TOKENS)))
    if spent and spent[4]:
        out["cost"] = round(spent[3], DIGITS)
    return out


def _model_node(
    prompts: dict[str, dict[str, dict[str, dict[str, Acc]]]],
    by_reason: dict[str, int],
    digits: int | None,
    spent: list[int] | None = None,
    legacy: bool = False,
) -> tuple[dict[str, Any], Acc]:
    """One model's subtree of the document, and its summed accumulator (`legacy`: the log
    has legacy imports, and every stats block says how many of its tests are legacy)."""
    prompts_out: dict[str, Any] = {}
    prompt_accs: list[Acc] = []
    for prompt, rates in prompts.items():
        rates_out: dict[str, Any] = {}
        rate_accs: list[Acc] = []
        for rk, diffs in rates.items():
            diffs_out: dict[str, Any] = {}
            diff_accs: list[Acc] = []
            for diff, tasks in diffs.items():
                d = _sum(tasks.values())
                diff_accs.append(d)
                diffs_out[diff] = {
                    "overall_stats": stats(d, digits, legacy),
                    "by_task_type": {t: stats(a, digits, legacy) for t, a in tasks.items()},
                }
            ra = _sum(diff_accs)
            rate_accs.append(ra)
            rates_out[rk] = {"overall_stats": stats(ra, digits, legacy), "by_difficulty": diffs_out}
        pa = _sum(rate_accs)
        prompt_accs.append(pa)
        prompts_out[prompt] = {
            "overall_stats": stats(pa, digits, legacy),
            "by_tool_success_rate": rates_out,
        }
    ma = _sum(prompt_accs)
    node = {
        "overall_stats": stats(ma, digits, legacy),
        "errored_attempts": sum(by_reason.values()),
        "errored_by_reason": dict(sorted(by_reason.items())),
        # every token the log records for the model: its tests' (completed, errored,
        # interrupted, duplicated or retracted) and its routes' preflight requests
        "tokens_spent": _spent(spent),
        "by_prompt_type": prompts_out,
    }
    return node, ma


def _document(
    state: FoldState, model_totals: list[Acc], models: dict[str, Any], digits: int | None
) -> dict[str, Any]:
    """The whole document around its `models` (the totals in the same order)."""
    everything = _sum(model_totals)
    legacy = bool(state.legacy)
    summary = {"total_tests": everything.total}
    summary.update((k, v) for k, v in stats(everything, digits, legacy).items() if k != "total")
    t = everything.total
    summary.update(
        models_tested=sum(1 for a in model_totals if a.total > 0),
        simulated_tests=everything.simulated,
        simulated_share=(round(everything.simulated / t, digits) if digits is not None
                         else everything.simulated / t) if t else 0.0,
        last_test_time=everything.last_test_time or None,
        errored_attempts=sum(sum(r.values()) for r in state.errored.values()),
        tokens_spent=_spent([sum(col) for col in zip(*state.spent.values())] if state.spent else None),
        duplicate_completions=state.duplicate_completions,
        retracted_completions=state.retracted_completions,
        skipped_events=state.skipped_events,
    )
    if legacy:
        summary["legacy_sources"] = {
            name: {"tests": sum(a.total for a in src.leaves.values()), "cells": src.cells,
                   "sha256": src.sha256, "last_updated": src.last_updated or None,
                   "imported_at": src.recorded_at, "import_seq": src.seq}
            for name, src in sorted(state.legacy.items())}

    groups = {}
    leaves = all_leaves(state)
    for key in sorted(leaves):
        acc = leaves[key]
        groups["|".join(key)] = {
            "model": key[0],
            "prompt_type": key[1],
            "tool_success_rate": None if key[2] == UNPLACED else float(key[2]),
            "difficulty": key[3],
            "task_type": key[4],
            # Counted tests are distinct test keys, and a key is one instance of its cell.
            "num_instances": acc.total,
            "total_tests": acc.total,
            "timestamp": acc.last_test_time or None,  # None: legacy cells only
        }
    return {
        "schema_version": FILE_SCHEMA_VERSION,
        "generated_at": state.generated_at or None,
        "last_seq": state.last_seq,
        "chain_head": state.chain_head or None,
        "summary": summary,
        "test_groups": groups,
        "models": models,
    }


def render(state: FoldState, *, digits: int | None = DIGITS) -> dict[str, Any]:
    """The master_database document (plain dicts), from the fold state alone."""
    tree = _tree(state)
    models: dict[str, Any] = {}
    model_totals: list[Acc] = []
    for model in sorted(set(tree) | set(state.errored) | set(state.spent)):
        models[model], total = _model_node(tree.get(model, {}), state.errored.get(model, {}),
                                           digits, state.spent.get(model), bool(state.legacy))
        model_totals.append(total)
    return _document(state, model_totals, models, digits)


def encode_document(doc: dict[str, Any]) -> bytes:
    """Deterministic bytes: keys in the order `render` builds them (documented, and the
    same however the state was built), two-space indent, trailing newline."""
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


def render_bytes(state: FoldState) -> bytes:
    return encode_document(render(state))


# ---- rendering again, reusing what did not change ---------------------------------------

# Who rendered a file: a file another version of this code wrote is never reused.
RENDERER = msgspec.json.encode(
    [__version__, FILE_SCHEMA_VERSION, DIGITS, AVERAGED, TOKENS, ERROR_CATEGORIES]).decode()


class ModelMemo(msgspec.Struct, array_like=True):
    inputs: str  # sha256 of the model's leaves and errored counts: its subtree's only inputs
    total: Acc  # the model's summed accumulator, which the summary adds up
    span: tuple[int, int]  # where its subtree's bytes are in the file


class RenderMemo(msgspec.Struct):
    """What `render_file` leaves for the next render: the file it made, and what each
    model's subtree in it was rendered from."""

    renderer: str
    size: int  # of the file: a file of another size is not even read
    sha256: str  # of the file's bytes: any other bytes are rendered afresh
    models: dict[str, ModelMemo]


_MODEL_INDENT = b"\n    "  # a model's subtree sits two levels deep in the file
_NO_MODELS_END = b"{}\n}\n"  # how encode_document ends a document with no models


def _reusable(previous: bytes | None, memo: RenderMemo | None) -> dict[str, ModelMemo]:
    """What `memo` says of the subtrees in `previous` (nothing unless it is the very file
    the memo describes, written by this renderer)."""
    if previous is None or memo is None or memo.renderer != RENDERER:
        return {}
    if len(previous) != memo.size or hashlib.sha256(previous).hexdigest() != memo.sha256:
        return {}  # edited, foreign, or from another render: nothing of it propagates
    return memo.models


def render_file(
    state: FoldState, previous: bytes | None = None, memo: RenderMemo | None = None
) -> tuple[bytes, RenderMemo]:
    """`render_bytes(state)` and its memo, byte for byte, rendering only the models whose
    inputs changed since `memo`: the others are copied from `previous`, the file `memo`
    describes (a new event touches one model's subtree; the summary and test groups are
    rendered every time).

    The file is `encode_document`'s layout put together by hand: the document without
    models, then each model's subtree, formatted alone and indented to its depth.
    """
    tree = _tree(state)
    reusable = _reusable(previous, memo)
    names = sorted(set(tree) | set(state.errored) | set(state.spent))
    subtrees: list[bytes] = []
    totals: list[Acc] = []
    memos: dict[str, ModelMemo] = {}
    for model in names:
        prompts, by_reason = tree.get(model, {}), state.errored.get(model, {})
        spent = state.spent.get(model)
        legacy = bool(state.legacy)
        inputs = hashlib.sha256(msgspec.json.encode(
            (prompts, by_reason, spent, *((True,) if legacy else ())))).hexdigest()
        old = reusable.get(model)
        if old is not None and old.inputs == inputs:
            subtrees.append(previous[old.span[0]:old.span[1]])  # type: ignore[index]
            total = old.total
        else:
            node, total = _model_node(prompts, by_reason, DIGITS, spent, legacy)
            subtrees.append(msgspec.json.format(msgspec.json.encode(node), indent=2)
                            .replace(b"\n", _MODEL_INDENT))  # newlines in strings are escaped
        totals.append(total)
        memos[model] = ModelMemo(inputs, total, (0, 0))
    data = bytearray(encode_document(_document(state, totals, {}, DIGITS)))
    if names:
        del data[-len(_NO_MODELS_END):]
        data += b"{"
        for i, (model, subtree) in enumerate(zip(names, subtrees)):
            data += b"," * (i > 0) + _MODEL_INDENT + msgspec.json.encode(model) + b": "
            memos[model].span = (len(data), len(data) + len(subtree))
            data += subtree
        data += b"\n  }\n}\n"
    out = bytes(data)
    return out, RenderMemo(RENDERER, len(out), hashlib.sha256(out).hexdigest(), memos)


# ---- invariants ------------------------------------------------------------------------

_SUMMED = (
    "full_success",
    "partial_success",
    "failure",
    "success",
    "total_errors",
    "tests_with_assistance",
    "tests_truncated",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    *(f"{c}_errors" for c in ERROR_CATEGORIES),
)
_LEVELS = ("by_prompt_type", "by_tool_success_rate", "by_difficulty", "by_task_type")


def _check_stats(where: str, s: Any, total_name: str = "total") -> list[str]:
    bad: list[str] = []
    if not isinstance(s, dict):
        return [f"{where}: stats missing"]
    try:
        t = s[total_name]
        if t != s["full_success"] + s["partial_success"] + s["failure"]:
            bad.append(f"{where}: {total_name} {t} != full + partial + failure")
        if s["success"] != s["full_success"] + s["partial_success"]:
            bad.append(f"{where}: success != full_success + partial_success")
        if "legacy_tests" in s and not 0 <= s["legacy_tests"] <= t:
            bad.append(f"{where}: legacy_tests {s['legacy_tests']} outside [0, {total_name}]")
        cats = sum(s[f"{c}_errors"] for c in ERROR_CATEGORIES)
        if cats != s["total_errors"]:
            bad.append(f"{where}: error categories sum to {cats}, total_errors is {s['total_errors']}")
        for name, value in s.items():
            if name.endswith("_rate") or name == "weighted_success_score":
                if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                    bad.append(f"{where}: {name} {value!r} outside [0, 1]")
        for name, count in (
            ("success_rate", s["success"]),
            ("full_success_rate", s["full_success"]),
            ("failure_rate", s["failure"]),
            ("assistance_rate", s["tests_with_assistance"]),
        ):
            expect = count / t if t else 0.0
            if abs(s[name] - expect) > 10 ** -(DIGITS - 1):
                bad.append(f"{where}: {name} {s[name]} is not {count}/{t}")
    except (KeyError, TypeError) as exc:
        bad.append(f"{where}: malformed stats ({exc!r})")
    return bad


def _check_node(where: str, node: Any, depth: int) -> list[str]:
    """Check a node's own stats and that its children add up to it, recursively."""
    if depth == len(_LEVELS):  # a leaf: stats only
        return _check_stats(where, node)
    if not isinstance(node, dict) or not isinstance(node.get(_LEVELS[depth]), dict):
        return [f"{where}: missing {_LEVELS[depth]}"]
    overall = node.get("overall_stats") or {}  # missing: reported as malformed below
    bad = _check_stats(where, overall)
    children = node[_LEVELS[depth]]
    for name, child in children.items():
        bad += _check_node(f"{where}/{name}", child, depth + 1)
    if bad:
        return bad
    child_stats = [c if depth + 1 == len(_LEVELS) else c["overall_stats"] for c in children.values()]
    for field in ("total", *_SUMMED, *(("legacy_tests",) if "legacy_tests" in overall else ())):
        got = sum(c[field] for c in child_stats)
        if got != overall[field]:
            bad.append(f"{where}: {field} {overall[field]} but its {_LEVELS[depth]} add up to {got}")
    return bad


def check_invariants(doc: Any) -> list[str]:
    """Every invariant of a master_database document; empty when it holds."""
    if not isinstance(doc, dict):
        return ["document is not a JSON object"]
    bad: list[str] = []
    models = doc.get("models")
    summary = doc.get("summary")
    if not isinstance(models, dict) or not isinstance(summary, dict):
        return ["document lacks models or summary"]
    for model, node in models.items():
        bad += _check_node(model, node, 0)
    bad += _check_stats("summary", summary, "total_tests")
    if bad:
        return bad
    for field in ("total_tests", *_SUMMED, *(("legacy_tests",) if "legacy_tests" in summary else ())):
        name = "total" if field == "total_tests" else field
        got = sum(m["overall_stats"][name] for m in models.values())
        if got != summary[field]:
            bad.append(f"summary: {field} {summary[field]} but the models add up to {got}")
    tested = sum(1 for m in models.values() if m["overall_stats"]["total"] > 0)
    if summary.get("models_tested") != tested:
        bad.append(f"summary: models_tested {summary.get('models_tested')} but {tested} models have tests")
    errored = sum(m.get("errored_attempts", 0) for m in models.values())
    if summary.get("errored_attempts") != errored:
        bad.append(f"summary: errored_attempts {summary.get('errored_attempts')} but models add up to {errored}")
    for model, m in models.items():
        if sum(m.get("errored_by_reason", {}).values()) != m.get("errored_attempts"):
            bad.append(f"{model}: errored_by_reason does not add up to errored_attempts")
    for name in TOKENS:
        got = sum((m.get("tokens_spent") or {}).get(name, 0) for m in models.values())
        if got != (summary.get("tokens_spent") or {}).get(name, 0):
            bad.append(f"summary: tokens_spent {name} but the models add up to {got}")
        for model, m in models.items():
            if (m.get("tokens_spent") or {}).get(name, 0) < m["overall_stats"][name]:
                bad.append(f"{model}: tokens_spent {name} below its counted tests' tokens")
    groups = doc.get("test_groups")
    if not isinstance(groups, dict):
        return [*bad, "document lacks test_groups"]
    for gid, g in groups.items():
        try:
            leaf = models[g["model"]]["by_prompt_type"][g["prompt_type"]]["by_tool_success_rate"][
                UNPLACED if g["tool_success_rate"] is None else rate_key(g["tool_success_rate"])
            ]["by_difficulty"][g["difficulty"]]["by_task_type"][g["task_type"]]
        except (KeyError, TypeError):
            bad.append(f"test_groups/{gid}: no such leaf in models")
            continue
        if leaf["total"] != g["total_tests"]:
            bad.append(f"test_groups/{gid}: total_tests {g['total_tests']} but the leaf has {leaf['total']}")
    group_total = sum(g.get("total_tests", 0) for g in groups.values())
    if group_total != summary["total_tests"]:
        bad.append(f"test_groups add up to {group_total}, summary says {summary['total_tests']}")
    return bad


__all__ = ["Acc", "all_leaves", "AVERAGED", "check_invariants", "DIGITS", "dump_state",
           "encode_document", "FILE_SCHEMA_VERSION", "fold", "fold_legacy", "FoldState",
           "LeafKey", "legacy_acc", "legacy_key", "LegacySource", "load_state", "ModelMemo",
           "render", "render_bytes", "render_file", "RENDERER", "RenderMemo", "STATE_VERSION",
           "stats", "TOKENS", "Tree", "UNPLACED"]
