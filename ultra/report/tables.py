"""The standard tables, computed from results.db (one GROUP BY query per table).

A `Table` is plain data (columns with a kind, rows of values); `formats` and `page` render
it. Rates are shares in [0, 1]; intervals are 95 % Wilson intervals `[low, high]`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import msgspec

from projections.results_db import CELL_SUMS, legacy_as_cells_sql
from ultra.errors import UserError
from ultra.events import ERROR_CATEGORIES
from ultra.naming import canonical_model, rate_key
from ultra.report.intervals import Z95, two_proportion_p, wilson

Kind = Literal["text", "count", "rate", "interval", "score", "mean", "tokens", "cost", "delta",
               "p", "number", "figure"]

TABLES: tuple[str, ...] = (
    "overview", "prompt-types", "flaws", "tool-reliability", "difficulty", "task-types",
    "scale", "errors", "metrics",
)
DIFFICULTY_ORDER = ("very_easy", "easy", "medium", "hard", "very_hard")
PROMPT_ORDER = ("baseline", "cot", "optimal")
FLAWED = "flawed_"


class Column(msgspec.Struct, frozen=True):
    key: str
    title: str
    kind: Kind
    detail: bool = False  # left out of the 80-column terminal table only


class Table(msgspec.Struct):
    name: str
    title: str
    columns: list[Column]
    rows: list[list[Any]]
    notes: list[str] = []
    condition: str = ""  # the condition's label, when the selection holds several
    # per row: [simulated tests, tests] behind it (empty: the table does not say)
    simulated: list[list[int]] = []
    # per row: rate column key -> [successes, tests] behind the rate (a mean of rates has
    # [tests, tests, low, high]: its interval is given, not derived), so every format can
    # give each rate its n and 95 % interval
    counts: list[dict[str, list[Any]]] = []

    def simulated_state(self) -> str:
        """"all", "none" or "mixed": whether the simulator answered the table's tests."""
        sim = sum(r[0] for r in self.simulated)
        n = sum(r[1] for r in self.simulated)
        return "none" if sim == 0 else "all" if sim == n else "mixed"


class Selection(msgspec.Struct, kw_only=True):
    """Which counted tests a report covers (the selection flags of `ultra run`, and more)."""

    models: list[str] | None = None
    prompt_types: list[str] | None = None
    difficulties: list[str] | None = None
    task_types: list[str] | None = None
    rates: list[float] | None = None
    run: str | None = None
    exclude_timeouts: bool = False
    include_legacy: bool = False  # legacy sources' tests added into the models' own numbers
    condition: str | None = None  # only this condition (its id or label: `max_turns=4`)
    unpaired: bool = False  # --compare without pairing tests (its samples as they are)


class ModelInfo(msgspec.Struct, kw_only=True, frozen=True):
    """What the config knows of a model that the events do not: its family, its size and
    its prices (per million tokens)."""

    family: str | None = None
    params_b: float | None = None
    input_price: float | None = None
    output_price: float | None = None


class Counts(msgspec.Struct):
    """Sums over a group of counted tests."""

    n: int = 0
    success: int = 0
    full: int = 0
    partial: int = 0
    failure: int = 0
    final_score: float = 0.0
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[int] = msgspec.field(default_factory=lambda: [0] * len(ERROR_CATEGORIES))
    truncated: int = 0  # tests with an answer cut off at the token limit

    @property
    def success_rate(self) -> float | None:
        return self.success / self.n if self.n else None


# Reports read results.db's `cells` (the tests' sums per cell and run), not every test.
_SUMS = ", ".join(f"SUM({c})" for c in CELL_SUMS)
_TIMEOUT_FAILURE = "timeout_failure = 1"


def _counts(row: Sequence[Any]) -> Counts:
    return Counts(n=row[0], success=row[1], full=row[2], partial=row[3], failure=row[4],
                  final_score=row[5] or 0.0, turns=row[6], prompt_tokens=row[7],
                  completion_tokens=row[8], errors=list(row[9:9 + len(ERROR_CATEGORIES)]),
                  truncated=row[9 + len(ERROR_CATEGORIES)])


class Source:
    """results.db under a selection: checked once, queried per table."""

    def __init__(self, conn: sqlite3.Connection, sel: Selection,
                 info: dict[str, ModelInfo] | None = None) -> None:
        self.conn = conn
        self.sel = sel
        self.info = info or {}
        # Each legacy source is a condition of its own (run_id `legacy:<source>`, models
        # labelled) unless --include-legacy; without legacy cells, `cells` as it is.
        self.legacy_sources = [r[0] for r in conn.execute(
            "SELECT source FROM legacy_imports WHERE cells > 0 ORDER BY source")]
        self.table = legacy_as_cells_sql(sel.include_legacy) if self.legacy_sources else "cells"
        self.model_column = "base_model" if self.legacy_sources else "model"
        known = [r[0] for r in conn.execute(
            f"SELECT DISTINCT {self.model_column} FROM {self.table} ORDER BY 1")]
        if not known:
            raise UserError("results.db holds no counted tests yet (run `ultra run`, or "
                            "`ultra project` over a log that has some)")
        self.models: list[str] | None = None
        if sel.models:
            lookup = {m.lower(): m for m in known}
            aliases = dict(conn.execute("SELECT alias, canonical FROM aliases").fetchall())
            chosen = []
            for name in sel.models:
                m = lookup.get(canonical_model(name, aliases).lower())
                if m is None:
                    raise UserError(f"unknown model {name!r}: results.db has {', '.join(known)}")
                chosen.append(m)
            self.models = list(dict.fromkeys(chosen))
        if sel.run is not None:
            self._check_run(sel.run)
        self.labels = dict(conn.execute("SELECT condition, label FROM conditions"))
        self.condition: str | None = None
        if sel.condition is not None:
            by_label = {label: c for c, label in self.labels.items()}
            self.condition = sel.condition if sel.condition in self.labels else \
                by_label.get(sel.condition)
            if self.condition is None:
                raise UserError(f"unknown condition {sel.condition!r}: results.db has "
                                + "; ".join(sorted(self.labels.values())))
        where, params = self._where(sel.run)
        self.where, self.params = where, params
        n = conn.execute(f"SELECT COALESCE(SUM(n), 0) FROM {self.table} WHERE {where}", params).fetchone()[0]
        if n == 0:
            raise UserError("no counted tests match this selection")
        self.timeouts_excluded = 0
        # the conditions of ultra's own tests in the selection (legacy sources are rows of
        # their own): (id, label, tests)
        self.conditions: list[tuple[str, str, int]] = [
            (c, self.labels.get(c, c), n) for c, n in conn.execute(
                f"SELECT condition, SUM(n) FROM {self.table} WHERE {where} AND condition NOT LIKE"
                " 'legacy:%' GROUP BY condition ORDER BY condition = 'default' DESC, condition",
                params)]
        if sel.exclude_timeouts:
            base, base_params = self._where(sel.run, with_timeouts=True)
            self.timeouts_excluded = conn.execute(
                f"SELECT COALESCE(SUM(n), 0) FROM {self.table} WHERE {base} AND {_TIMEOUT_FAILURE}",
                base_params).fetchone()[0]

    def _check_run(self, run: str) -> None:
        if run.startswith("legacy:"):
            if run[len("legacy:"):] not in self.legacy_sources:
                raise UserError(f"unknown legacy source {run[len('legacy:'):]!r}: results.db has"
                                f" {', '.join(self.legacy_sources) or 'none'}")
            return
        found = self.conn.execute(
            "SELECT 1 FROM tests WHERE run_id = ? UNION SELECT 1 FROM errored WHERE run_id = ?"
            " UNION SELECT 1 FROM runs WHERE run_id = ? LIMIT 1", (run, run, run)).fetchone()
        if found is None:
            raise UserError(f"unknown run id {run!r}: results.db has no such run")

    def _where(self, run: str | None, *, with_timeouts: bool = False,
               table: str = "cells") -> tuple[str, list[Any]]:
        sel = self.sel
        parts: list[str] = ["1 = 1"]
        params: list[Any] = []

        def among(column: str, values: Iterable[Any] | None) -> None:
            if values is not None:
                values = list(values)
                parts.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)

        among(getattr(self, "model_column", "model") if table == "cells" else "model", self.models)
        prompts = sel.prompt_types
        if prompts is not None and "all_with_flawed" not in prompts:
            plain = [p for p in prompts if p != "all"]
            if "all" in prompts:
                parts.append(f"(prompt_type NOT LIKE '{FLAWED}%'"
                             + (f" OR prompt_type IN ({', '.join('?' * len(plain))}))" if plain else ")"))
                params.extend(plain)
            else:
                among("prompt_type", plain)
        among("difficulty", sel.difficulties)
        among("task_type", sel.task_types)
        if sel.rates is not None:
            among("ROUND(tool_success_rate, 4)", [round(r, 4) for r in sel.rates])
        if run is not None:
            parts.append("run_id = ?")
            params.append(run)
        if getattr(self, "condition", None) is not None:
            parts.append("(condition = ? OR condition LIKE 'legacy:%')" if table == "cells"
                         else "condition = ?")
            params.append(self.condition)
        if sel.exclude_timeouts and not with_timeouts and table == "cells":
            parts.append("timeout_failure = 0")
        return " AND ".join(parts), params

    def grouped(self, *dims: str, run: str | None = None,
                light: bool = False) -> dict[tuple[Any, ...], Counts]:
        """Counts per (model, *dims), models in name order; `light`: tests and successes only
        (what a pivot of success rates needs, at a fraction of the cost)."""
        if run is None:
            where, params = self.where, self.params
        else:
            where, params = self._where(run)
        keys = ", ".join(("model", *dims))
        sums = "SUM(n), SUM(success)" if light else _SUMS
        rows = self.conn.execute(
            f"SELECT {keys}, {sums} FROM {self.table} WHERE {where} GROUP BY {keys} ORDER BY {keys}",
            params).fetchall()
        width = 1 + len(dims)
        if light:
            return {tuple(r[:width]): Counts(n=r[width], success=r[width + 1]) for r in rows}
        return {tuple(r[:width]): _counts(r[width:]) for r in rows}

    def errored(self, run: str | None = None) -> dict[str, int]:
        where, params = self._where(run if run is not None else self.sel.run, table="errored")
        rows = self.conn.execute(
            f"SELECT model, COUNT(*) FROM errored WHERE {where} GROUP BY model", params).fetchall()
        return dict(rows)

    def where_tests(self) -> tuple[str, list[Any]]:
        """The selection over `tests` rows (ultra's own tests; legacy cells have none)."""
        where, params = self._where(self.sel.run, table="tests")
        if self.sel.exclude_timeouts:
            where += " AND NOT (outcome = 'failure' AND error_category IS 'timeout')"
        return where, params

    def check_run(self, run: str) -> None:
        self._check_run(run)

    def simulated_by_model(self, runs: Sequence[str] | None = None) -> dict[str, list[int]]:
        """model (as the rows name it) -> [simulated tests, tests] under the selection (or
        the selection in `runs`)."""
        out: dict[str, list[int]] = {}
        for run in (runs or [None]):
            where, params = (self.where, self.params) if run is None else self._where(run)
            for model, n, sim in self.conn.execute(
                    f"SELECT model, SUM(n), SUM(simulated * n) FROM {self.table} WHERE {where}"
                    " GROUP BY model", params):
                acc = out.setdefault(_unlabelled(model) if runs else model, [0, 0])
                acc[0] += sim or 0
                acc[1] += n or 0
        return out

    def notes(self) -> list[str]:
        out = []
        if self.sel.exclude_timeouts:
            out.append(f"--exclude-timeouts: {self.timeouts_excluded} tests that failed by"
                       " timeout are left out of every denominator")
        if self.legacy_sources:
            names = ", ".join(f"legacy:{s}" for s in self.legacy_sources)
            out.append(f"legacy sources ({names}) added into the models' numbers (--include-legacy)"
                       if self.sel.include_legacy else
                       f"legacy sources ({names}): conditions of their own, rows '<model>"
                       " [legacy:<source>]'; never added into ultra's own tests (--include-legacy"
                       " adds them); their cells have no tokens")
        return out


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
    """Each suite's own metrics, means per test, per model and suite (from `tests`: a
    metric's tests are its suite's, so the table never adds one suite's into another's)."""
    from projections.results_db import FIXED_METRICS, quoted
    from ultra.projection.projecting import metric_columns

    extra = metric_columns(src.conn)
    names = [*sorted(FIXED_METRICS, key=_FIXED_ORDER.index), *extra.names]
    column = {**{n: n for n in FIXED_METRICS}, **extra.columns}
    where, params = src.where_tests()
    means = ", ".join(f"TOTAL({quoted(column[n])}) / COUNT(*)" for n in names)  # as the views
    have = ", ".join(f"COUNT({quoted(column[n])})" for n in names)
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
    cols += [Column(f"avg_{names[i]}", names[i].replace("_", " "), "score") for i in used]
    rows = [[r[0], r[1], r[2], r[3] / r[2], list(wilson(r[3], r[2])),
             *[(r[4 + i] if r[4 + k + i] else None) for i in used]] for r in found]
    return Table("metrics", "Suite metrics: means per test", cols, rows,
                 ["each suite's own metrics (a suite without one shows none); a test without"
                  " a metric its suite declares adds 0 to its mean", *src.notes()],
                 counts=[{"success_rate": [r[3], r[2]]} for r in found],
                 simulated=[[r[-1], r[2]] for r in found])


_FIXED_ORDER = ("final_score", "workflow_score", "phase2_score", "quality_score")


def compare(src: Source, run_a: str, run_b: str) -> Table:
    src.check_run(run_a)
    src.check_run(run_b)
    a = {_unlabelled(k[0]): c for k, c in src.grouped(run=run_a).items()}
    b = {_unlabelled(k[0]): c for k, c in src.grouped(run=run_b).items()}
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


def _unlabelled(model: str) -> str:
    """A model's name without the `[legacy:<source>]` label of a legacy condition."""
    i = model.find(" [legacy:")
    return model[:i] if i >= 0 and model.endswith("]") else model


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
           "difficulty", "DIFFICULTY_ORDER", "errors", "FLAWED", "flaws", "Kind",
           "mark_simulated", "metrics", "ModelInfo", "overview", "PROMPT_ORDER", "prompt_types",
           "scale", "Selection", "Source", "Table", "TABLES", "task_types", "tool_reliability"]
