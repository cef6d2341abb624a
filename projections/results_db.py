"""results.db: one row per counted test, for `ultra report` and any SQLite client.

The pure half: the tables' columns, the rows an event becomes, and the views (one per
level of master_database's hierarchy). What counts is decided by `projections.counting`,
exactly as for master_database.json; `ultra.projection.projecting` writes the rows with
sqlite-utils.

Each table is one spec (`TEST_SPEC`, `ERRORED_SPEC`, `CELL_SPEC`, `LEGACY_CELL_SPEC`): a
column's name, type and the value it takes from the event, side by side; the DDL's columns
and the compiled row functions (`test_row`, `errored_row`, `add_to_cells`,
`legacy_cell_row`) are made from it, so adding a field is one line and no position can
disagree. A suite's own metrics (any but the workflow
suite's four) become columns of `tests` when a run declares them (`run.started`) or a
test first carries one (`MetricColumns`); the views aggregate each as its suite declared.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from projections.columns import Column, Sum, row_function, sums_function, table
from projections.counting import Counted, declare
from ultra.events import (ERROR_CATEGORIES, WORKFLOW_METRICS, RunFinished, RunStarted, TestCompleted,
                          metric_stat)
from ultra.naming import condition_label, rate_key

VERSION = 8  # bump when tables, rows or views change: an older results.db is rebuilt

# Each table's columns, in table order, each with the value it takes (projections/columns.py:
# the DDL and the row function are made from the same list). The dimensions come first.
_IDENTITY = (
    Column("seq", int, "seq"),
    Column("event_id", str, "e.event_id"),
    Column("test_key", str, "e.test_key"),
    Column("model", str, "model"),  # canonical (aliases, instances, case folded)
    Column("instance", str, "e.instance"),  # the route: qwen-key1, DeepSeek-V3-0324-2, ...
    Column("provider", str, "e.provider"),
    Column("run_id", str, "e.run_id"),
    Column("shard_id", str, "e.shard_id"),
)
_CELL = (
    Column("prompt_type", str, "e.prompt_type"),
    Column("tool_success_rate", float, "_rate(e.tool_success_rate)"),
    Column("difficulty", str, "e.difficulty"),
    Column("task_type", str, "e.task_type"),
)
# The workflow suite's scores have columns of their own; any other suite's metrics get a
# FLOAT column each (named after the metric, `metric_<name>` where that is taken), added
# when a run declares it or a test first carries it, and listed in the `metrics` table
# (made with the first).
FIXED_METRIC_ORDER = WORKFLOW_METRICS
FIXED_METRICS: frozenset[str] = frozenset(FIXED_METRIC_ORDER)
TEST_SPEC: tuple[Column, ...] = (
    *_IDENTITY,
    Column("suite", str, "e.suite"),
    *_CELL,
    Column("task_id", str, "e.task_id"),
    Column("simulated", int, "int(e.simulated)"),
    Column("outcome", str, "r.outcome"),  # full_success | partial_success | failure
    Column("success", int, "int(r.outcome != 'failure')"),  # 1 for full or partial success
    *(Column(n, float, f"m.get({n!r})") for n in FIXED_METRIC_ORDER),
    # null for a full success (the schema admits only known categories)
    Column("error_category", str, "r.error_category"),
    Column("turns", int, "r.turns"),
    Column("tool_calls", int, "r.tool_calls"),
    Column("required_tools", int, "r.required_tools"),
    Column("tool_coverage", float, "r.tool_coverage"),
    Column("assisted_turns", int, "r.assisted_turns"),
    # 1 when an answer was cut off at the token limit (finish_reason length)
    Column("truncated", int, "int('length' in r.finish_reasons)"),
    Column("prompt_tokens", int, "u.prompt_tokens"),
    Column("completion_tokens", int, "u.completion_tokens"),  # reasoning included, as the APIs count
    Column("reasoning_tokens", int, "u.reasoning_tokens"),
    Column("retries", int, "e.retries"),
    Column("execution_time", float, "e.execution_time"),  # seconds
    Column("started_at", str, "e.started_at"),
    Column("recorded_at", str, "e.recorded_at"),
    # every input of the test key but model, instance, cell (`conditions`)
    Column("condition", str, "e.condition"),
)
ERRORED_SPEC: tuple[Column, ...] = (
    *_IDENTITY, *_CELL,
    Column("simulated", int, "int(e.simulated)"),
    Column("reason", str, "e.reason"),
    Column("http_status", int, "getattr(e, 'http_status', None)"),
    Column("retries", int, "e.retries"),
    Column("execution_time", float, "e.execution_time"),
    Column("recorded_at", str, "e.recorded_at"),
    Column("prompt_tokens", int, "e.usage.prompt_tokens"),  # what the answers it did get cost
    Column("completion_tokens", int, "e.usage.completion_tokens"),
    Column("condition", str, "e.condition"),
)
TEST_COLUMNS: dict[str, type] = table(TEST_SPEC)
ERRORED_COLUMNS: dict[str, type] = table(ERRORED_SPEC)

# `conditions`: what each condition id stands for (from the runs that used it)
CONDITION_COLUMNS: dict[str, type] = {"condition": str, "label": str, "fields": str}

RUN_COLUMNS: dict[str, type] = {
    "run_id": str, "started_at": str, "finished_at": str, "planned": int, "completed": int,
    "errored": int, "interrupted": int, "config_digest": str, "argv": str,
}

# `cells`: the tests' sums per cell of the matrix and run, kept as rows are added, so that a
# report reads a few thousand rows instead of scanning every test. `timeout_failure` keeps
# the failures by timeout apart (`ultra report --exclude-timeouts` leaves them out).
CELL_KEYS: tuple[str, ...] = (
    "model", "run_id", "prompt_type", "tool_success_rate", "difficulty", "task_type",
    "condition",  # reports never add two conditions' tests into one number
    "simulated",  # 1 when the simulator answered: reports mark simulated results apart
    "timeout_failure",  # last: add_to_cells derives it, the others are test columns
)
_AT = {name: i for i, name in enumerate(TEST_COLUMNS)}
_READ = ("outcome", "error_category", "success", "final_score", "turns", "prompt_tokens",
         "completion_tokens", "truncated")
CELL_SPEC: tuple[Sum, ...] = (
    Sum("n", int, "1"),
    Sum("success", int, "success"),
    Sum("full_success", int, "outcome == 'full_success'"),
    Sum("partial_success", int, "outcome == 'partial_success'"),
    Sum("failure", int, "outcome == 'failure'"),
    Sum("final_score", float, "final_score or 0.0"),
    Sum("turns", int, "turns"),
    Sum("prompt_tokens", int, "prompt_tokens"),
    Sum("completion_tokens", int, "completion_tokens"),
    *(Sum(f"{c}_errors", int, "0") for c in ERROR_CATEGORIES),  # one of them, below
    Sum("truncated", int, "truncated"),
)
CELL_SUMS: tuple[str, ...] = tuple(table(CELL_SPEC))
CELL_COLUMNS: dict[str, type] = {
    **{k: (float if k == "tool_success_rate" else int if k in ("timeout_failure", "simulated")
           else str) for k in CELL_KEYS}, **table(CELL_SPEC)}
add_to_cells = sums_function(
    "add_to_cells",
    key=[*(f"row[{_AT[k]}]" for k in CELL_KEYS[:-1]),
         "int(outcome == 'failure' and error_category == 'timeout')"],
    sums=CELL_SPEC,
    prelude=[f"{n} = row[{_AT[n]}]" for n in _READ],
    extra=["if error_category is not None:", "    s[CATEGORY_SLOT[error_category]] += 1"],
    namespace={"CATEGORY_SLOT": {c: CELL_SUMS.index(f"{c}_errors") for c in ERROR_CATEGORIES}},
)
add_to_cells.__doc__ = "Add one `tests` row (TEST_COLUMNS order) to the cell sums in `cells`."


METRIC_COLUMNS: dict[str, type] = {
    "name": str, "column_name": str, "suite": str,
    "seq": int,  # of the run that declared it, or of the first test that had it
    "position": int,  # the column's place among these (their order in `tests`)
    "aggregate": str,  # mean | sum, as first declared; NULL: never declared (a mean)
}


class MetricColumns:
    """The suites' own metrics beyond FIXED_METRICS that results.db has columns for, in
    order of first appearance in the log (so a fresh fold and an incremental one agree),
    and how each aggregates (`aggregates`: the declared ones)."""

    def __init__(self, known: Iterable[tuple[str, str, str | None]] = ()) -> None:
        self.names: list[str] = []
        self.columns: dict[str, str] = {}  # metric name -> column name
        self.aggregates: dict[str, str] = {}  # metric name -> "mean" | "sum", if declared
        for name, column, aggregate in known:
            self.names.append(name)
            self.columns[name] = column
            if aggregate is not None:
                self.aggregates[name] = aggregate

    def stat(self, name: str) -> str:
        """The name of the metric's aggregate (`avg_<name>`, `total_<name>`)."""
        return metric_stat(name, self.aggregates.get(name, "mean"))

    def aggregate_sql(self, name: str) -> str:
        """Its aggregate over a group of `tests` rows, as master_database.json's: a sum, or
        a mean per test (a test without it, another suite's or one scored before it, adds 0)."""
        total = f"TOTAL({quoted(self.columns[name])})"
        return total if self.aggregates.get(name) == "sum" else f"{total} / COUNT(*)"

    def declared(self, e: RunStarted) -> list[tuple[str, str]]:
        """A run's declarations: (name, aggregate) of each metric beyond FIXED_METRICS that
        none declared before (the first declaration of a name holds), now in `aggregates`."""
        return [(n, self.aggregates[n]) for n in declare(self.aggregates, e) if n not in FIXED_METRICS]

    def add(self, name: str) -> str:
        taken = {c.lower() for c in (*TEST_COLUMNS, *self.columns.values())}
        column = name
        while column.lower() in taken:
            column = f"metric_{column}"
        self.names.append(name)
        self.columns[name] = column
        return column


def quoted(name: str) -> str:
    """An SQL identifier for any metric name (64 characters at most, by the schema)."""
    return '"' + name.replace('"', '""') + '"'


def cells_upsert_sql() -> str:
    """Adds a batch of cell sums to the stored ones (plain SQL upsert)."""
    cols = [*CELL_KEYS, *CELL_SUMS]
    return (f"INSERT INTO cells ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            f" ON CONFLICT ({', '.join(CELL_KEYS)}) DO UPDATE SET "
            + ", ".join(f"{c} = {c} + excluded.{c}" for c in CELL_SUMS))


DIMENSIONS: tuple[str, ...] = (
    "model", "run_id", "prompt_type", "tool_success_rate", "difficulty", "task_type",
    "condition",
)
LEVELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("by_model", ("model",)),
    ("by_prompt_type", ("model", "prompt_type")),
    ("by_tool_success_rate", ("model", "prompt_type", "tool_success_rate")),
    ("by_difficulty", ("model", "prompt_type", "tool_success_rate", "difficulty")),
    ("by_task_type", ("model", "prompt_type", "tool_success_rate", "difficulty", "task_type")),
)


def _rate(rate: float) -> float:
    """The rate as master_database.json keys it (4 digits): 0.80004 is the cell of 0.8."""
    return float(rate_key(rate))


_SPEC_NAMES = {"_rate": _rate}
# The row of one counted completion, in TEST_COLUMNS order (a suite's metrics beyond the
# workflow suite's four are added by `rows`), and of one `test.errored`.
test_row = row_function("test_row", "seq, e, model", TEST_SPEC,
                        prelude=("u = e.usage", "r = e.result", "m = r.metrics"), namespace=_SPEC_NAMES)
errored_row = row_function("errored_row", "seq, e, model", ERRORED_SPEC, namespace=_SPEC_NAMES)


def rows(counted: Iterable[Counted], extra: MetricColumns | None = None,
         ) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(table, row) for each counted completion ("tests") and `test.errored` ("errored");
    with `extra`, a test's row ends with its values of `extra`'s metrics, and a metric seen
    for the first time is added to `extra` and announced first as ("metric", (seq, name,
    suite)), so that its column exists before a row carries it."""
    fixed = FIXED_METRICS
    for seq, e, model, _rk in counted:
        if type(e) is TestCompleted:
            row = test_row(seq, e, model)
            if extra is not None:
                m = e.result.metrics
                if not m.keys() <= fixed:
                    for name in m:
                        if name not in fixed and name not in extra.columns:
                            extra.add(name)
                            yield "metric", (seq, name, e.suite)
                if extra.names:
                    row = (*row, *[m.get(name) for name in extra.names])
            yield "tests", row
        else:
            yield "errored", errored_row(seq, e, model)


def condition_rows(e: RunStarted) -> list[dict[str, Any]]:
    """The `conditions` rows a run declares."""
    import json


    return [dict(condition=c, label=condition_label(f), fields=json.dumps(f, sort_keys=True))
            for c, f in sorted(e.conditions.items())]


def run_update(e: RunStarted | RunFinished) -> dict[str, Any]:
    """The columns of the `runs` row that a run event sets (an upsert merges them)."""
    if isinstance(e, RunStarted):
        return dict(run_id=e.run_id, started_at=e.recorded_at, planned=e.plan.tests,
                    config_digest=e.config_digest, argv=" ".join(e.argv))
    return dict(run_id=e.run_id, finished_at=e.recorded_at, completed=e.completed,
                errored=e.errored, interrupted=int(e.interrupted))


def _stats_sql(extra: MetricColumns | None = None) -> str:
    """Aggregate columns named as in master_database.json's stats blocks."""
    cols = [
        "COUNT(*) AS total",
        "AVG(success) AS success_rate",
        "AVG(outcome = 'full_success') AS full_success_rate",
        "AVG(outcome = 'partial_success') AS partial_rate",
        "AVG(outcome = 'failure') AS failure_rate",
        "AVG((outcome = 'full_success') + 0.5 * (outcome = 'partial_success'))"
        " AS weighted_success_score",
        "AVG(tool_coverage) AS tool_coverage_rate",
        "AVG(assisted_turns > 0) AS assistance_rate",
        "SUM(success) AS success",
        "SUM(outcome = 'full_success') AS full_success",
        "SUM(outcome = 'partial_success') AS partial_success",
        "SUM(outcome = 'failure') AS failure",
        "SUM(assisted_turns > 0) AS tests_with_assistance",
        "SUM(prompt_tokens) AS prompt_tokens",
        "SUM(completion_tokens) AS completion_tokens",
        "SUM(reasoning_tokens) AS reasoning_tokens",
        # a suite's metrics are means per test, as master_database's: a test without one
        # (another suite's, or one that ended before it was scored) adds 0
        "TOTAL(final_score) / COUNT(*) AS avg_final_score",
        "TOTAL(workflow_score) / COUNT(*) AS avg_workflow_score",
        "TOTAL(phase2_score) / COUNT(*) AS avg_phase2_score",
        "TOTAL(quality_score) / COUNT(*) AS avg_quality_score",
        "AVG(turns) AS avg_turns",
        "AVG(tool_calls) AS avg_tool_calls",
        "AVG(execution_time) AS avg_execution_time",
        "SUM(error_category IS NOT NULL) AS total_errors",
    ]
    cols += [f"SUM(error_category IS '{c}') AS {c}_errors" for c in ERROR_CATEGORIES]
    if extra is not None:  # the other suites' metrics, as declared
        cols += [f"{extra.aggregate_sql(n)} AS {quoted(extra.stat(n))}" for n in extra.names]
    return ",\n  ".join(cols)


def view_sql(extra: MetricColumns | None = None) -> dict[str, str]:
    """One view per level of the hierarchy: name -> SELECT."""
    stats = _stats_sql(extra)
    return {
        name: f"SELECT {', '.join(keys)},\n  {stats}\nFROM tests GROUP BY {', '.join(keys)}"
        for name, keys in LEVELS
    }


# ---- legacy sources (`ultra import-legacy`): their own tables, never in `tests`/`cells` ----

# One row per cell of each source's current import (a later import of a source replaces
# its rows). The sums are as `cells` spells them; a mean the leaf lacked is NULL.
LEGACY_CELL_SPEC: tuple[Column, ...] = (
    Column("seq", int, "seq"),
    Column("event_id", str, "e.event_id"),
    Column("source", str, "e.source"),
    Column("import_id", str, "e.import_id"),
    Column("model", str, "model"),  # canonical
    Column("legacy_model", str, "e.legacy_model"),  # as the file spells it
    Column("prompt_type", str, "e.prompt_type"),
    # NULL: not placed by the file (version 2.0)
    Column("tool_success_rate", float,
           "None if e.tool_success_rate is None else _rate(e.tool_success_rate)"),
    Column("difficulty", str, "e.difficulty"),
    Column("task_type", str, "e.task_type"),
    Column("path", str, "e.path"),
    Column("counting", str, "e.counting"),
    Column("anomaly", str, "e.anomaly"),
    Column("n", int, "e.total"),
    Column("success", int, "e.full_success + e.partial_success"),
    Column("full_success", int, "e.full_success"),
    Column("partial_success", int, "e.partial_success"),
    Column("failure", int, "e.failure"),
    Column("tests_with_assistance", int, "e.tests_with_assistance"),
    Column("final_score", float, "sums.get('final_score')"),  # sums over the cell's tests
    Column("turns", float, "sums.get('turns')"),  # (average x n)
    Column("execution_time", float, "sums.get('execution_time')"),
    *(Column(f"{c}_errors", int, f"e.errors.get({c!r}, 0)") for c in ERROR_CATEGORIES),
)
LEGACY_CELL_COLUMNS: dict[str, type] = table(LEGACY_CELL_SPEC)
LEGACY_IMPORT_COLUMNS: dict[str, type] = {
    "source": str,  # one row per source: its current (latest) import
    "import_id": str,
    "seq": int,
    "recorded_at": str,
    "sha256": str,
    "file_name": str,
    "file_version": str,
    "last_updated": str,
    "cells": int,  # as the legacy.imported event declares
    "tests": int,
}


# The row of one `legacy.cell`, in LEGACY_CELL_COLUMNS order.
legacy_cell_row = row_function("legacy_cell_row", "seq, e, model", LEGACY_CELL_SPEC,
                               prelude=("sums = e.sums",), namespace=_SPEC_NAMES)


def legacy_import_row(seq: int, e: Any) -> dict[str, Any]:
    return dict(source=e.source, import_id=e.event_id, seq=seq, recorded_at=e.recorded_at,
                sha256=e.sha256, file_name=e.file_name, file_version=e.file_version,
                last_updated=e.last_updated, cells=e.cells, tests=e.tests)


def legacy_as_cells_sql(include: bool) -> str:
    """`cells` with each legacy source's cells added as a condition of its own: run_id
    `legacy:<source>`, and (unless `include`) the model labelled `<model> [legacy:<source>]`,
    so no report adds them into the numbers of ultra's own tests. (A mean a legacy leaf
    lacked counts as 0 there; legacy cells have no tokens, truncation nor timeout split.)"""
    label = "model" if include else "model || ' [legacy:' || source || ']'"
    legacy_sums = ", ".join(
        "COALESCE(final_score, 0.0)" if c == "final_score"
        else "COALESCE(turns, 0.0)" if c == "turns"
        else "0" if c in ("prompt_tokens", "completion_tokens", "truncated") else c
        for c in CELL_SUMS)
    cols = ", ".join((*CELL_KEYS, *CELL_SUMS))
    return (f"(SELECT {cols}, model AS base_model FROM cells UNION ALL"
            f" SELECT {label}, 'legacy:' || source, prompt_type, tool_success_rate, difficulty,"
            f" task_type, 'legacy:' || source, 0, 0, {legacy_sums}, model FROM legacy_cells)")


__all__ = ["add_to_cells", "CELL_COLUMNS", "CELL_KEYS", "CELL_SPEC", "CELL_SUMS", "cells_upsert_sql",
           "CONDITION_COLUMNS", "condition_rows", "DIMENSIONS", "ERRORED_COLUMNS", "ERRORED_SPEC", "errored_row",
           "FIXED_METRIC_ORDER", "FIXED_METRICS", "legacy_as_cells_sql", "LEGACY_CELL_COLUMNS", "LEGACY_CELL_SPEC", "legacy_cell_row",
           "LEGACY_IMPORT_COLUMNS", "legacy_import_row", "LEVELS", "METRIC_COLUMNS",
           "MetricColumns", "quoted", "rows", "RUN_COLUMNS", "run_update", "TEST_COLUMNS", "TEST_SPEC",
           "test_row", "VERSION", "view_sql"]
