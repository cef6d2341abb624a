"""The standard tables, computed from results.db (one GROUP BY query per table).

A `Table` is plain data (columns with a kind, rows of values); `formats` and `page` render
it. Rates are shares in [0, 1]; intervals are 95 % Wilson intervals `[low, high]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from projections.results_db import FIXED_METRIC_ORDER
from ultra.errors import UserError
from ultra.events import ERROR_CATEGORIES
from ultra.naming import rate_key
from ultra.report.intervals import Z95, two_proportion_p, wilson
from ultra.report.source import FLAWED, Column, Counts, ModelInfo, Selection, Source, Table, unlabelled

TABLES: tuple[str, ...] = (
    "overview", "prompt-types", "flaws", "tool-reliability", "difficulty", "task-types",
    "scale", "errors", "metrics",
)
DIFFICULTY_ORDER = ("very_easy", "easy", "medium", "hard", "very_hard")
PROMPT_ORDER = ("baseline", "cot", "optimal")


# ---- the tables --------------------------------------------------------------------------


def _cost(c: Counts, info: ModelInfo | None) -> float | None:
    if info is None or (info.input_price is None and info.output_price is None):
        return None
    return (c.prompt_tokens * (info.input_price or 0.0)
            + c.completion_tokens * (info.output_price or 0.0)) / 1e6


def overview(src: Source) -> Table:
    per_model = {k[0]: c for k, c in src.grouped().items()}
    errored = src.errored()
    cols = [
        Column("model", "model", "text"),
        Column("tests", "tests", "count"),
        Column("success_rate", "success %", "rate"),
        Column("success_ci", "95% CI", "interval"),
        Column("full_success_rate", "full %", "rate"),
        Column("full_success_ci", "full 95% CI", "interval", detail=True),
        Column("partial_rate", "partial %", "rate", detail=True),  # = success - full
        Column("partial_ci", "partial 95% CI", "interval", detail=True),
        Column("failure_rate", "failure %", "rate"),
        Column("failure_ci", "failure 95% CI", "interval", detail=True),
        Column("avg_final_score", "score", "score"),
        Column("avg_turns", "turns", "mean"),
        Column("avg_tokens", "tokens per test", "tokens"),
        Column("cost", "cost $", "cost"),
        Column("errored", "errored", "count"),
    ]
    rows = []
    counts: list[dict[str, list[Any]]] = []
    for model, c in per_model.items():
        rows.append([
            model, c.n,
            c.success / c.n, list(wilson(c.success, c.n)),
            c.full / c.n, list(wilson(c.full, c.n)),
            c.partial / c.n, list(wilson(c.partial, c.n)),
            c.failure / c.n, list(wilson(c.failure, c.n)),
            c.final_score / c.n, c.turns / c.n,
            (c.prompt_tokens + c.completion_tokens) / c.n,
            _cost(c, src.info.get(model)), errored.get(model, 0),
        ])
        counts.append({"success_rate": [c.success, c.n], "full_success_rate": [c.full, c.n],
                       "partial_rate": [c.partial, c.n], "failure_rate": [c.failure, c.n]})
    notes = ["success = full + partial success; 95 % Wilson intervals; score = mean final score",
             "errored = attempts that could not be taken (rate limits, timeouts, 5xx): in no rate",
             *src.notes()]
    if any(r[13] is None for r in rows):
        notes.append("cost: shown for models whose config gives input_price and output_price")
    if any(c.truncated for c in per_model.values()):  # a column only where it says something
        cols.append(Column("truncated", "truncated", "count"))
        for row, c in zip(rows, per_model.values()):
            row.append(c.truncated)
        notes.append("truncated = tests with an answer cut off at the token limit"
                     " (finish_reason length): raise max_tokens")
    return Table("overview", "Overview: per model", cols, rows, notes, counts=counts)


def _order(values: Iterable[str], first: Sequence[str]) -> list[str]:
    values = set(values)
    return [v for v in first if v in values] + sorted(values - set(first))


def _pivot(src: Source, name: str, title: str, cells: dict[tuple[Any, ...], Counts],
           values: list[Any], labels: list[str]) -> Table:
    models = sorted({k[0] for k in cells})
    cols = [Column("model", "model", "text"), Column("tests", "tests", "count")]
    cols += [Column(str(value), f"{str(label).replace('_', ' ')} %", "rate")
             for value, label in zip(values, labels)]
    rows = []
    counts: list[dict[str, list[Any]]] = []
    for model in models:
        rates = [cells[(model, v)].success_rate if (model, v) in cells else None for v in values]
        n = sum(c.n for (m, _), c in cells.items() if m == model)
        rows.append([model, n, *rates])
        counts.append({str(v): [cells[(model, v)].success, cells[(model, v)].n]
                       for v in values if (model, v) in cells})
    return Table(name, title, cols, rows, ["cells: success rate (full + partial)", *src.notes()],
                 counts=counts)


def prompt_types(src: Source) -> Table:
    cells = src.grouped("prompt_type", light=True)
    values = _order((k[1] for k in cells if not k[1].startswith(FLAWED)), PROMPT_ORDER)
    if not values:
        raise UserError("no baseline, cot or optimal tests match this selection")
    return _pivot(src, "prompt-types", "Success by prompt type", cells, values, values)


def flaws(src: Source) -> Table:
    from ultra.suites.workflow.flaws import FLAWS

    cells = src.grouped("prompt_type", light=True)
    values = _order((k[1] for k in cells if k[1].startswith(FLAWED)), [FLAWED + f for f in FLAWS])
    if not values:
        raise UserError("no flawed_* tests match this selection (run with "
                        "--prompt-types all_with_flawed)")
    t = _pivot(src, "flaws", "Adaptation to flawed workflows", cells, values,
               [v.removeprefix(FLAWED) for v in values])
    t.columns.append(Column("adaptability", "adaptability %", "rate"))
    for row, cnt in zip(t.rows, t.counts):
        rates = [r for r in row[2:] if r is not None]
        row.append(sum(rates) / len(rates) if rates else None)
        if rates:  # a mean of independent rates: its normal-approximation interval
            m = len(rates)
            var = sum(k / n * (1 - k / n) / n for k, n in cnt.values()) / (m * m)
            mean = sum(rates) / m
            half = Z95 * var ** 0.5
            n_all = sum(n for _, n in cnt.values())
            cnt["adaptability"] = [n_all, n_all, max(0.0, mean - half), min(1.0, mean + half)]
    t.notes.insert(1, "adaptability: the mean success rate over the flaw types a model took"
                      " (its interval: normal approximation of a mean of rates)")
    return t


def tool_reliability(src: Source) -> Table:
    cells = src.grouped("tool_success_rate", light=True)
    present = sorted({k[1] for k in cells if k[1] is not None}, reverse=True)  # None: a legacy
    # source that does not place its tests by rate
    t = _pivot(src, "tool-reliability", "Sensitivity to tool reliability", cells,
               present, [rate_key(r) for r in present])
    t.columns.append(Column("drop", "drop", "delta"))
    for row in t.rows:
        rates = row[2:]
        hi = next((r for r in rates if r is not None), None)
        lo = next((r for r in reversed(rates) if r is not None), None)
        row.append(hi - lo if hi is not None and lo is not None and len(present) > 1 else None)
    t.notes.insert(1, "columns: tool success rate; drop: success at the highest rate minus at "
                      "the lowest")
    return t


def difficulty(src: Source) -> Table:
    cells = src.grouped("difficulty", light=True)
    values = _order((k[1] for k in cells), DIFFICULTY_ORDER)
    return _pivot(src, "difficulty", "Success by difficulty", cells, values, values)


def task_types(src: Source) -> Table:
    cells = src.grouped("task_type", light=True)
    values = sorted({k[1] for k in cells})
    return _pivot(src, "task-types", "Success by task type", cells, values, values)


def scale(src: Source) -> Table:
    per_model = {k[0]: c for k, c in src.grouped().items()}
    sized = [(i.family, i.params_b, m) for m, i in src.info.items()
             if m in per_model and i.family and i.params_b]
    cols = [Column("family", "family", "text"), Column("model", "model", "text"),
            Column("params_b", "params B", "number"), Column("tests", "tests", "count"),
            Column("success_rate", "success %", "rate"), Column("success_ci", "95% CI", "interval"),
            Column("avg_final_score", "score", "score")]
    rows = []
    counts: list[dict[str, list[Any]]] = []
    for family, params, model in sorted(sized, key=lambda x: (x[0], x[1], x[2])):
        c = per_model[model]
        rows.append([family, model, params, c.n, c.success / c.n, list(wilson(c.success, c.n)),
                     c.final_score / c.n])
        counts.append({"success_rate": [c.success, c.n]})
    if not rows:
        raise UserError("no model of this selection has `family` and `params_b` in the config "
                        "(see --config presets)")
    unsized = sorted(set(per_model) - {m for _, _, m in sized})
    notes = ["models of a family ordered by size (config: family, params_b)", *src.notes()]
    if unsized:
        notes.append(f"not shown (no family or size in the config): {', '.join(unsized)}")
    return Table("scale", "Scale within a model family", cols, rows, notes, counts=counts)


def errors(src: Source) -> Table:
    per_model = {k[0]: c for k, c in src.grouped().items()}
    cols = [Column("model", "model", "text"), Column("tests", "tests", "count"),
            Column("errors", "errors", "count")]
    cols += [Column(c, c.replace("_", " ") + " %", "rate") for c in ERROR_CATEGORIES]
    rows = []
    counts: list[dict[str, list[Any]]] = []
    for model, c in per_model.items():
        total = sum(c.errors)
        rows.append([model, c.n, total, *[(e / total if total else None) for e in c.errors]])
        counts.append({cat: [e, total] for cat, e in zip(ERROR_CATEGORIES, c.errors) if total})
    return Table("errors", "Error categories", cols, rows,
                 ["errors: tests that were not a full success; categories as shares of them",
                  *src.notes()], counts=counts)


def metrics(src: Source) -> Table:
    """Each suite's own metrics, per model and suite, aggregated as declared: means per
    test, or totals (from `tests`: a metric's tests are its suite's, so the table never
    adds one suite's into another's)."""
    from projections.results_db import FIXED_METRICS, quoted
    from ultra.projection.results import metric_columns

    extra = metric_columns(src.conn)
    for n in FIXED_METRICS:  # the workflow suite's, in columns of their own: means
        extra.columns[n] = n
    names = [*sorted(FIXED_METRICS, key=_FIXED_ORDER.index), *extra.names]
    where, params = src.where_tests()
    means = ", ".join(extra.aggregate_sql(n) for n in names)  # as the views
    have = ", ".join(f"COUNT({quoted(extra.columns[n])})" for n in names)
    found = src.conn.execute(
        f"SELECT model, suite, COUNT(*), SUM(success), {means}, {have}, SUM(simulated) FROM tests"
        f" WHERE {where} GROUP BY model, suite ORDER BY model, suite", params).fetchall()
    if not found:
        raise UserError("no counted tests match this selection")
    k = len(names)
    used = [i for i in range(k) if any(r[4 + k + i] for r in found)]
    if not used:
        raise UserError("the selected tests carry no metrics")
    cols = [Column("model", "model", "text"), Column("suite", "suite", "text"),
            Column("tests", "tests", "count"), Column("success_rate", "success %", "rate"),
            Column("success_ci", "95% CI", "interval")]
    cols += [Column(extra.stat(names[i]), names[i].replace("_", " ")
                    + (" (total)" if extra.aggregates.get(names[i]) == "sum" else ""), "score")
             for i in used]
    rows = [[r[0], r[1], r[2], r[3] / r[2], list(wilson(r[3], r[2])),
             *[(r[4 + i] if r[4 + k + i] else None) for i in used]] for r in found]
    return Table("metrics", "Suite metrics: means per test, or totals as declared", cols, rows,
                 ["each suite's own metrics (a suite without one shows none), aggregated as"
                  " its suite declares them; a test without a metric adds 0 to its mean",
                  *src.notes()],
                 counts=[{"success_rate": [r[3], r[2]]} for r in found],
                 simulated=[[r[-1], r[2]] for r in found])


_FIXED_ORDER = FIXED_METRIC_ORDER


def compare(src: Source, run_a: str, run_b: str) -> Table:
    src.check_run(run_a)
    src.check_run(run_b)
    a = {unlabelled(k[0]): c for k, c in src.grouped(run=run_a).items()}
    b = {unlabelled(k[0]): c for k, c in src.grouped(run=run_b).items()}
    legacy = [r for r in (run_a, run_b) if r.startswith("legacy:")]
    cols = [Column("model", "model", "text"),
            Column("tests_a", "tests A", "count"), Column("success_a", "success A %", "rate"),
            Column("tests_b", "tests B", "count"), Column("success_b", "success B %", "rate"),
            Column("delta", "B - A", "delta"), Column("p_value", "p", "p"),
            Column("significant", "sig.", "text")]
    rows = []
    for model in sorted(set(a) | set(b)):
        ca, cb = a.get(model, Counts()), b.get(model, Counts())
        p = two_proportion_p(ca.success, ca.n, cb.success, cb.n)
        delta = (cb.success / cb.n - ca.success / ca.n) if ca.n and cb.n else None
        rows.append([model, ca.n, ca.success_rate, cb.n, cb.success_rate, delta, p,
                     "*" if p is not None and p < 0.05 else ""])
    if legacy:
        return Table("compare", f"{_what(run_b)} (B) against {_what(run_a)} (A), per model,"
                     " unpaired", cols, rows,
                     ["unpaired: a legacy source holds aggregate counts, not the same tests;"
                      " delta: success rate of B minus A; * two-proportion z-test of the two"
                      " samples, p < 0.05", *src.notes()])
    return Table("compare", f"Run {run_b} (B) against run {run_a} (A)", cols, rows,
                 ["delta: success rate of B minus A; * two-proportion z-test, p < 0.05",
                  *src.notes()])


COMPARE_DIMS = {"overview": (), "scale": (), "errors": (), "prompt-types": ("prompt_type",),
                "flaws": ("prompt_type",), "tool-reliability": ("tool_success_rate",),
                "difficulty": ("difficulty",), "task-types": ("task_type",)}
_PAIR = ("model", "prompt_type", "tool_success_rate", "difficulty", "task_type", "task_id")


def compare_paired(src: Source, run_a: str, run_b: str, table: str = "overview") -> Table:
    """B against A on the tests both took, paired by test (model, cell, task: the test key
    without its condition inputs), per model and the TABLE's dimension: paired n, the
    difference with a 95 % interval, and the exact McNemar test."""
    from ultra.report.intervals import mcnemar_exact_p, paired_difference_ci

    src.check_run(run_a)
    src.check_run(run_b)
    where, params = src._where(None, table="tests")
    outcome: dict[str, dict[tuple, int]] = {run_a: {}, run_b: {}}
    for row in src.conn.execute(
            f"SELECT run_id, {', '.join(_PAIR)}, success FROM tests WHERE {where}"
            " AND run_id IN (?, ?)", [*params, run_a, run_b]):
        outcome[row[0]][tuple(row[1:-1])] = row[-1]
    a, b = outcome[run_a], outcome[run_b]
    common = a.keys() & b.keys()
    if not common:
        raise UserError(f"runs {run_a} and {run_b} share no tests (--unpaired compares their"
                        " samples without pairing)")
    dims = COMPARE_DIMS.get(table, ())
    at = [_PAIR.index(d) for d in dims]
    groups: dict[tuple, list[int]] = {}
    for key in sorted(common, key=str):
        if table == "flaws" and not key[1].startswith(FLAWED):
            continue
        if table == "prompt-types" and key[1].startswith(FLAWED):
            continue
        # n, A's successes, B's, passed by A only, by B only
        g = groups.setdefault((key[0], *(key[i] for i in at)), [0, 0, 0, 0, 0])
        g[0] += 1
        g[1] += a[key]
        g[2] += b[key]
        g[3] += int(a[key] and not b[key])
        g[4] += int(b[key] and not a[key])
    interrupted = [r for r, fin, stop in src.conn.execute(
        "SELECT run_id, finished_at, interrupted FROM runs WHERE run_id IN (?, ?)", (run_a, run_b))
        if fin is None or stop]
    cols = [Column("model", "model", "text"),
            *(Column(d, d.replace("_", " "), "text") for d in dims),
            Column("paired", "paired n", "count"), Column("success_a", "success A %", "rate"),
            Column("success_b", "success B %", "rate"), Column("delta", "B - A", "delta"),
            Column("delta_ci", "95% CI", "interval"),
            Column("only_a", "A only", "count"), Column("only_b", "B only", "count"),
            Column("p_value", "McNemar p", "p"), Column("flags", "flags", "text")]
    rows, counts = [], []
    for key, g in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        n, ka, kb, only_a, only_b = g
        lo, hi = paired_difference_ci(only_a, only_b, n)
        flags = [*(["n < 30"] if n < 30 else []), *(["interrupted run"] if interrupted else [])]
        rows.append([*(rate_key(v) if isinstance(v, float) else v for v in key), n, ka / n,
                     kb / n, (only_b - only_a) / n, [lo, hi], only_a, only_b,
                     mcnemar_exact_p(only_a, only_b), "; ".join(flags)])
        counts.append({"success_a": [ka, n], "success_b": [kb, n]})
    left_a, left_b = len(a.keys() - common), len(b.keys() - common)
    notes = [f"paired by test (model, cell, task): {len(common)} tests both runs took;"
             f" left out: {left_a} only run A took, {left_b} only run B took",
             "B - A: paired difference of success rates, 95 % Wald interval of matched pairs;"
             " McNemar p: exact two-sided test on the discordant pairs (A only, B only)",
             *([f"interrupted: run {', '.join(interrupted)} did not finish its plan"]
               if interrupted else []),
             *src.notes()]
    return Table("compare", f"Run {run_b} (B) against run {run_a} (A), paired"
                 + (f": {table}" if dims else ""), cols, rows, notes, counts=counts)


def _what(run: str) -> str:
    return f"legacy source {run[len('legacy:'):]}" if run.startswith("legacy:") else f"run {run}"


BUILDERS = {
    "overview": overview, "prompt-types": prompt_types, "flaws": flaws,
    "tool-reliability": tool_reliability, "difficulty": difficulty, "task-types": task_types,
    "scale": scale, "errors": errors, "metrics": metrics,
}


def mark_simulated(t: Table, by_model: dict[str, list[int]]) -> Table:
    """Set each row's [simulated tests, tests] from its model, and say when the table mixes
    simulated and real tests."""
    keys = [c.key for c in t.columns]
    if "model" not in keys:
        return t
    j = keys.index("model")
    t.simulated = [list(by_model.get(row[j], [0, 0])) for row in t.rows]
    if t.simulated_state() == "mixed":
        t.notes.append("this table mixes simulated and real tests: rows marked simulated were"
                       " answered by the simulator, not by a model")
    return t


def build(src: Source, names: Sequence[str]) -> list[Table]:
    """The named tables; with several, those the selection has no data for are skipped."""
    sim = src.simulated_by_model()
    if len(names) == 1:
        return [mark_simulated(BUILDERS[names[0]](src), sim)]
    out = []
    for name in names:
        try:
            out.append(mark_simulated(BUILDERS[name](src), sim))
        except UserError:
            continue
    return out


__all__ = ["build", "BUILDERS", "Column", "compare", "COMPARE_DIMS", "compare_paired", "Counts",
           "difficulty", "DIFFICULTY_ORDER", "errors", "FLAWED", "flaws",
           "mark_simulated", "metrics", "ModelInfo", "overview", "PROMPT_ORDER", "prompt_types",
           "scale", "Selection", "Source", "Table", "TABLES", "task_types", "tool_reliability"]
