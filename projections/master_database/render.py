"""Rendering the fold state into master_database.json: whole, or reusing the models' subtrees
that did not change."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from ultra import __version__
from ultra.events import ERROR_CATEGORIES
from projections.master_database.fold import (AVERAGED, DIGITS, FILE_SCHEMA_VERSION, TOKENS, UNPLACED, Acc,
                                              FoldState, Tree, all_leaves, sum_accs)


# The names `stats` gives its per-test shares, in its key order (metrics apart).
_RATE_NAMES = ("success_rate", "full_success_rate", "partial_rate", "failure_rate",
               "weighted_success_score", *(stat for _, stat, kind in AVERAGED if kind == "rate"),
               "assistance_rate", "truncation_rate")
_RATE_SUMS = tuple(i for i, (_, _, kind) in enumerate(AVERAGED) if kind == "rate")
_MEAN_NAMES = (*(stat for _, stat, kind in AVERAGED if kind == "mean"), "avg_execution_time")
_MEAN_SUMS = tuple(i for i, (_, _, kind) in enumerate(AVERAGED) if kind == "mean")
_ERROR_NAMES = tuple((f"{c}_errors", f"{c}_error_rate") for c in ERROR_CATEGORIES)


def stats(a: Acc, digits: int | None = DIGITS, legacy: bool = False,
          summed: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Leaf stats of an accumulator: one name per quantity, the same at every level.

    Key order (docs/master_database.md): `total`; the rates; the counts; the means; then
    the error categories, each count beside its rate. Every share is `x / total`, rounded
    to `digits` (0.0 when there are no tests), computed in one list for speed. The suites'
    metrics are means (`avg_<name>`) but those declared as sums (`summed`: `total_<name>`).
    """
    t = a.total
    full, partial, failure, assisted = a.full_success, a.partial_success, a.failure, a.with_assistance
    success = full + partial
    sums, metrics, errors = a.sums, a.metrics, a.errors
    added = [success, full, partial, failure, full + 0.5 * partial,
              *[sums[i] for i in _RATE_SUMS], assisted, a.truncated,
              *metrics.values(), *[sums[i] for i in _MEAN_SUMS], a.execution_time, *errors]
    if not t:
        shares = [0.0] * len(added)
    elif digits is None:
        shares = [x / t for x in added]
    else:
        shares = [round(x / t, digits) for x in added]
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
    if summed and not summed.isdisjoint(metrics):
        for name, share in zip(metrics, shares[at:]):
            if name in summed:
                total = metrics[name]
                out[f"total_{name}"] = round(total, digits) if digits is not None else total
            else:
                out[f"avg_{name}"] = share
    else:
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


def summed_metrics(state: FoldState) -> frozenset[str]:
    """The metrics the log's runs declared as sums (the first declaration of a name holds)."""
    return frozenset(n for n, how in state.aggregates.items() if how == "sum")


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
    summed: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], Acc]:
    """One model's subtree of the document, and its summed accumulator (`legacy`: the log
    has legacy imports, and every stats block says how many of its tests are legacy;
    `summed`: the metrics declared as sums)."""
    prompts_out: dict[str, Any] = {}
    prompt_accs: list[Acc] = []
    for prompt, rates in prompts.items():
        rates_out: dict[str, Any] = {}
        rate_accs: list[Acc] = []
        for rk, diffs in rates.items():
            diffs_out: dict[str, Any] = {}
            diff_accs: list[Acc] = []
            for diff, tasks in diffs.items():
                d = sum_accs(tasks.values())
                diff_accs.append(d)
                diffs_out[diff] = {
                    "overall_stats": stats(d, digits, legacy, summed),
                    "by_task_type": {t: stats(a, digits, legacy, summed) for t, a in tasks.items()},
                }
            ra = sum_accs(diff_accs)
            rate_accs.append(ra)
            rates_out[rk] = {"overall_stats": stats(ra, digits, legacy, summed), "by_difficulty": diffs_out}
        pa = sum_accs(rate_accs)
        prompt_accs.append(pa)
        prompts_out[prompt] = {
            "overall_stats": stats(pa, digits, legacy, summed),
            "by_tool_success_rate": rates_out,
        }
    ma = sum_accs(prompt_accs)
    node = {
        "overall_stats": stats(ma, digits, legacy, summed),
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
    everything = sum_accs(model_totals)
    legacy = bool(state.legacy)
    summed = summed_metrics(state)
    summary = {"total_tests": everything.total}
    summary.update((k, v) for k, v in stats(everything, digits, legacy, summed).items() if k != "total")
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
                                           digits, state.spent.get(model), bool(state.legacy),
                                           summed_metrics(state))
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
    summed = summed_metrics(state)
    subtrees: list[bytes] = []
    totals: list[Acc] = []
    memos: dict[str, ModelMemo] = {}
    for model in names:
        prompts, by_reason = tree.get(model, {}), state.errored.get(model, {})
        spent = state.spent.get(model)
        legacy = bool(state.legacy)
        inputs = hashlib.sha256(msgspec.json.encode(
            (prompts, by_reason, spent, *((True,) if legacy else ()),
             *((sorted(summed),) if summed else ())))).hexdigest()
        old = reusable.get(model)
        if old is not None and old.inputs == inputs:
            subtrees.append(previous[old.span[0]:old.span[1]])  # type: ignore[index]
            total = old.total
        else:
            node, total = _model_node(prompts, by_reason, DIGITS, spent, legacy, summed)
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


__all__ = ["ModelMemo", "RENDERER", "RenderMemo", "encode_document", "render", "render_bytes", "render_file", "stats",
           "summed_metrics"]
