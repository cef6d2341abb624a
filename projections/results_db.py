"""results.db: one row per counted test, for `ultra report` and any SQLite client.

The pure half: the tables' columns, the rows an event becomes, and the views (one per
level of master_database's hierarchy). What counts is decided by `projections.counting`,
exactly as for master_database.json; `ultra.projection.projecting` writes the rows with sqlite-utils.

`test_row` and `errored_row` are the one place that reads the fields of test events, so
a change of the event schema is an edit here. A suite's own metrics (any but the workflow
suite's four) become columns of `tests` as they appear (`MetricColumns`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from projections.counting import Counted
from ultra.events import ERROR_CATEGORIES, RunFinished, RunStarted, TestCompleted
from ultra.naming import condition_label, rate_key

VERSION = 8  # bump when tables, rows or views change: an older results.db is rebuilt

# Column name -> SQLite type, in table order. The dimensions come first.
TEST_COLUMNS: dict[str, type] = {
    "seq": int,
    "event_id": str,
    "test_key": str,
    "model": str,  # canonical (aliases, instances, case folded)
    "instance": str,  # the route: qwen-key1, DeepSeek-V3-0324-2, ...
    "provider": str,
    "run_id": str,
    "shard_id": str,
    "suite": str,
    "prompt_type": str,
    "tool_success_rate": float,
    "difficulty": str,
    "task_type": str,
    "task_id": str,
    "simulated": int,
    "outcome": str,  # full_success | partial_success | failure
    "success": int,  # 1 for full or partial success
    "final_score": float,
    "workflow_score": float,
    "phase2_score": float,
    "quality_score": float,
    "error_category": str,  # null for a full success (the schema admits only known categories)
    "turns": int,
    "tool_calls": int,
    "required_tools": int,
    "tool_coverage": float,
    "assisted_turns": int,
    "truncated": int,  # 1 when an answer was cut off at the token limit (finish_reason length)
    "prompt_tokens": int,
    "completion_tokens": int,  # reasoning included, as the APIs count them
    "reasoning_tokens": int,
    "retries": int,
    "execution_time": float,  # seconds
    "started_at": str,
    "recorded_at": str,
    "condition": str,  # every input of the test key but model, instance, cell (`conditions`)
}

ERRORED_COLUMNS: dict[str, type] = {
    "seq": int,
    "event_id": str,
    "test_key": str,
    "model": str,
    "instance": str,
    "provider": str,
    "run_id": str,
    "shard_id": str,
    "prompt_type": str,
    "tool_success_rate": float,
    "difficulty": str,
    "task_type": str,
    "simulated": int,
    "reason": str,
    "http_status": int,
    "retries": int,
    "execution_time": float,
    "recorded_at": str,
    "prompt_tokens": int,  # what the answers the test did get cost
    "completion_tokens": int,
    "condition": str,
}

# `conditions`: what each condition id stands for (from the runs that used it)
CONDITION_COLUMNS: dict[str, type] = {"condition": str, "label": str, "fields": str}

RUN_COLUMNS: dict[str, type] = {
    "run_id": str,
    "started_at": str,
    "finished_at": str,
    "planned": int,
    "completed": int,
    "errored": int,
    "interrupted": int,
    "config_digest": str,
    "argv": str,
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
CELL_SUMS: tuple[str, ...] = (
    "n", "success", "full_success", "partial_success", "failure", "final_score", "turns",
    "prompt_tokens", "completion_tokens", *(f"{c}_errors" for c in ERROR_CATEGORIES),
    "truncated",
)
CELL_COLUMNS: dict[str, type] = {
    **{k: (float if k == "tool_success_rate" else int if k in ("timeout_failure", "simulated")
           else str)
       for k in CELL_KEYS},
    **{k: (float if k == "final_score" else int) for k in CELL_SUMS},
}
_CATEGORY_SLOT = {c: 9 + i for i, c in enumerate(ERROR_CATEGORIES)}
_TRUNCATED_SLOT = 9 + len(ERROR_CATEGORIES)
_AT = {name: i for i, name in enumerate(TEST_COLUMNS)}
_KEY_AT = tuple(_AT[k] for k in CELL_KEYS[:-1])
_OUTCOME, _CATEGORY, _SUCCESS, _SCORE, _TURNS, _PROMPT, _COMPLETION, _TRUNCATED = (
    _AT[k] for k in ("outcome", "error_category", "success", "final_score", "turns",
                     "prompt_tokens", "completion_tokens", "truncated"))


# The workflow suite's scores have columns of their own; any other suite's metrics get a
# FLOAT column each (named after the metric, `metric_<name>` where that is taken), added
# when a metric first appears, and listed in the `metrics` table (made with the first).
FIXED_METRICS: frozenset[str] = frozenset(
    ("final_score", "workflow_score", "phase2_score", "quality_score"))
METRIC_COLUMNS: dict[str, type] = {
    "name": str, "column_name": str, "suite": str,
    "seq": int,  # of the first test that had it
    "position": int,  # the column's place among these (their order in `tests`)
}


class MetricColumns:
    """The suites' own metrics beyond FIXED_METRICS that results.db has columns for, in
    order of first appearance in the log (so a fresh fold and an incremental one agree)."""

    def __init__(self, known: Iterable[tuple[str, str]] = ()) -> None:
        self.names: list[str] = []
        self.columns: dict[str, str] = {}  # metric name -> column name
        for name, column in known:
            self.names.append(name)
            self.columns[name] = column

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


def add_to_cells(cells: dict[tuple[Any, ...], list[Any]], row: tuple[Any, ...]) -> None:
    """Add one `tests` row (TEST_COLUMNS order) to the cell sums in `cells`."""
    outcome, category = row[_OUTCOME], row[_CATEGORY]
    key = (*(row[i] for i in _KEY_AT), int(outcome == "failure" and category == "timeout"))
    sums = cells.get(key)
    if sums is None:
        sums = cells[key] = [0, 0, 0, 0, 0, 0.0, 0, 0, 0, *([0] * len(ERROR_CATEGORIES)), 0]
    sums[0] += 1
    sums[1] += row[_SUCCESS]
    sums[2 if outcome == "full_success" else 3 if outcome == "partial_success" else 4] += 1
    sums[5] += row[_SCORE] or 0.0
    sums[6] += row[_TURNS]
    sums[7] += row[_PROMPT]
    sums[8] += row[_COMPLETION]
    if category is not None:
        sums[_CATEGORY_SLOT[category]] += 1
    sums[_TRUNCATED_SLOT] += row[_TRUNCATED]


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


def test_row(seq: int, e: TestCompleted, model: str) -> tuple[Any, ...]:
    """The row of one counted completion, in TEST_COLUMNS order (a suite's metrics that
    are not columns here are left out; the workflow suite's four are columns)."""
    u = e.usage
    r = e.result
    m = r.metrics
    return (
        seq, e.event_id, e.test_key, model, e.instance, e.provider, e.run_id, e.shard_id,
        e.suite, e.prompt_type, _rate(e.tool_success_rate), e.difficulty, e.task_type, e.task_id,
        int(e.simulated), r.outcome, int(r.outcome != "failure"),
        m.get("final_score"), m.get("workflow_score"), m.get("phase2_score"),
        m.get("quality_score"),
        r.error_category, r.turns, r.tool_calls, r.required_tools, r.tool_coverage,
        r.assisted_turns, int("length" in r.finish_reasons), u.prompt_tokens, u.completion_tokens,
        u.reasoning_tokens, e.retries, e.execution_time, e.started_at,
        e.recorded_at, e.condition,
    )


def errored_row(seq: int, e: Any, model: str) -> tuple[Any, ...]:
    """The row of one `test.errored`, in ERRORED_COLUMNS order."""
    return (
        seq, e.event_id, e.test_key, model, e.instance, e.provider, e.run_id, e.shard_id,
        e.prompt_type, _rate(e.tool_success_rate), e.difficulty, e.task_type, int(e.simulated),
        e.reason, getattr(e, "http_status", None), e.retries, e.execution_time, e.recorded_at,
        e.usage.prompt_tokens, e.usage.completion_tokens, e.condition,
    )


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
    if extra is not None:  # the other suites' metrics likewise
        cols += [f"TOTAL({quoted(extra.columns[n])}) / COUNT(*) AS {quoted('avg_' + n)}"
                 for n in extra.names]
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
LEGACY_CELL_COLUMNS: dict[str, type] = {
    "seq": int,
    "event_id": str,
    "source": str,
    "import_id": str,
    "model": str,  # canonical
    "legacy_model": str,  # as the file spells it
    "prompt_type": str,
    "tool_success_rate": float,  # NULL: not placed by the file (version 2.0)
    "difficulty": str,
    "task_type": str,
    "path": str,
    "counting": str,
    "anomaly": str,
    "n": int,
    "success": int,
    "full_success": int,
    "partial_success": int,
    "failure": int,
    "tests_with_assistance": int,
    "final_score": float,  # sums over the cell's tests (average x n)
    "turns": float,
    "execution_time": float,
    **{f"{c}_errors": int for c in ERROR_CATEGORIES},
}
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


def legacy_cell_row(seq: int, e: Any, model: str) -> tuple[Any, ...]:
    """The row of one `legacy.cell`, in LEGACY_CELL_COLUMNS order."""
    sums = e.sums
    return (
        seq, e.event_id, e.source, e.import_id, model, e.legacy_model, e.prompt_type,
        None if e.tool_success_rate is None else _rate(e.tool_success_rate), e.difficulty,
        e.task_type, e.path, e.counting, e.anomaly, e.total, e.full_success + e.partial_success,
        e.full_success, e.partial_success, e.failure, e.tests_with_assistance,
        sums.get("final_score"), sums.get("turns"), sums.get("execution_time"),
        *(e.errors.get(c, 0) for c in ERROR_CATEGORIES),
    )


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


__all__ = ["add_to_cells", "CELL_COLUMNS", "CELL_KEYS", "CELL_SUMS", "cells_upsert_sql",
           "CONDITION_COLUMNS", "condition_rows", "DIMENSIONS", "ERRORED_COLUMNS", "errored_row",
           "FIXED_METRICS", "legacy_as_cells_sql", "LEGACY_CELL_COLUMNS", "legacy_cell_row",
           "LEGACY_IMPORT_COLUMNS", "legacy_import_row", "LEVELS", "METRIC_COLUMNS",
           "MetricColumns", "quoted", "rows", "RUN_COLUMNS", "run_update", "TEST_COLUMNS",
           "test_row", "VERSION", "view_sql"]
