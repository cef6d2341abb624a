"""results.db: incremental == a fresh fold over any split; the same numbers as the JSON."""

from __future__ import annotations

import json
import math
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_helpers import (_test, append_and_project, completed, completion, errored,
                             event_lists, ts)

from projections import results_db as rdb
from ultra import events as ev
from ultra.projection.audit import audit
from ultra.projection.results import fresh_results
from ultra.projection.projecting import project
from ultra.eventlog.store import EventLog

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TABLES = (("tests", "event_id"), ("errored", "event_id"), ("runs", "run_id"), ("aliases", "alias"),
          ("meta", "key"))


def dump(conn: sqlite3.Connection) -> dict[str, list]:
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {k}").fetchall() for t, k in TABLES}


def project_at_splits(events: list[ev.Event], tmp: Path, splits: list[int]) -> Path:
    append_and_project(events, tmp, splits)
    return tmp / "results.db"


@SETTINGS
@given(event_lists(max_size=40), st.lists(st.integers(0, 40), max_size=4))
def test_incremental_updates_over_any_split_equal_a_fresh_fold(events, splits):
    with tempfile.TemporaryDirectory() as tmp:
        path = project_at_splits(events, Path(tmp), [min(s, len(events)) for s in splits])
        with sqlite3.connect(path) as conn, EventLog.open(Path(tmp) / "events.db") as log:
            fresh = fresh_results(log, log.last_seq())
            assert dump(conn) == dump(fresh.conn)
            assert_cells_are_the_tests_sums(conn)
            assert_cells_are_the_tests_sums(fresh.conn)
            # and the views say what master_database.json says, level by level
            doc = json.loads((Path(tmp) / "master_database.json").read_bytes())
            assert_views_match(conn, doc)


def assert_cells_are_the_tests_sums(conn: sqlite3.Connection) -> None:
    """`cells` holds, per cell, run and timeout-failure flag, the sums of its tests."""
    keys = ", ".join(rdb.CELL_KEYS[:-1])
    want = conn.execute(
        f"SELECT {keys}, outcome = 'failure' AND error_category IS 'timeout' AS tf, COUNT(*),"
        " SUM(success), SUM(outcome = 'full_success'), SUM(outcome = 'partial_success'),"
        " SUM(outcome = 'failure'), SUM(final_score), SUM(turns), SUM(prompt_tokens),"
        " SUM(completion_tokens), "
        + ", ".join(f"SUM(error_category IS '{c}')" for c in ev.ERROR_CATEGORIES)
        + ", SUM(truncated)"
        + f" FROM tests GROUP BY {keys}, tf ORDER BY {keys}, tf").fetchall()
    got = conn.execute(f"SELECT * FROM cells ORDER BY {keys}, timeout_failure").fetchall()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[:7] == w[:7] and g[7:12] == w[7:12] and g[13:] == w[13:], (g, w)
        assert math.isclose(g[12], w[12], rel_tol=1e-9, abs_tol=1e-9)


def assert_views_match(conn: sqlite3.Connection, doc: dict) -> None:
    conn.row_factory = sqlite3.Row
    levels = ["by_prompt_type", "by_tool_success_rate", "by_difficulty", "by_task_type"]
    views = ["by_model", *levels]
    seen = 0
    for depth, view in enumerate(views):
        for row in conn.execute(f"SELECT * FROM {view}"):
            row = dict(row)
            path = [row["model"], row.get("prompt_type"), row.get("tool_success_rate"),
                    row.get("difficulty"), row.get("task_type")][: depth + 1]
            node = doc["models"][path[0]]
            for level, name in zip(levels, path[1:]):
                node = node[level][str(round(name, 4)) if isinstance(name, float) else name]
            stats = node if depth == 4 else node["overall_stats"]
            for key, want in stats.items():
                if key in row:
                    assert math.isclose(row[key], want, abs_tol=2e-6), (view, path, key)
                    seen += 1
    assert seen or not doc["summary"]["total_tests"]


def test_rows_dimensions_and_views(tmp_path):
    events = [
        ev.RunStarted(run_id="run-1", argv=["run"], config_digest="d", recorded_at=ts(0),
                      plan=ev.PlanSummary(tests=3, shards=1, models=["DeepSeek-V3-0324"])),
        completed(1, instance="DeepSeek-V3-0324-2", model="DeepSeek-V3-0324-2", simulated=True,
                  usage=ev.Usage(prompt_tokens=100, completion_tokens=20, reasoning_tokens=5)),
        completed(2, outcome="failure", error_category="other", test_key="key-2"),
        completed(3, event_id="dup", test_key="key-1", outcome="failure", error_category="timeout"),
        errored(4, reason="timeout"),
        ev.RunFinished(run_id="run-1", completed=3, errored=1, recorded_at=ts(5)),
    ]
    path = project_at_splits(events, tmp_path, [2, 4])
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM tests ORDER BY seq")]
    assert [r["event_id"] for r in rows] == ["c1", "c2"]  # the duplicate counts once
    first = rows[0]
    assert (first["model"], first["instance"], first["simulated"], first["success"]) == \
        ("DeepSeek-V3-0324", "DeepSeek-V3-0324-2", 1, 1)
    assert (first["prompt_tokens"], first["completion_tokens"], first["reasoning_tokens"]) == (100, 20, 5)
    assert rows[1]["error_category"] == "other"
    assert [r[0] for r in conn.execute("SELECT reason FROM errored")] == ["timeout"]
    run = dict(conn.execute("SELECT * FROM runs").fetchone())
    assert (run["planned"], run["completed"], run["errored"], run["finished_at"]) == (3, 3, 1, ts(5))
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(tests)")}
    assert {f"tests_by_{d}" for d in ("model", "run_id", "prompt_type", "tool_success_rate",
                                      "difficulty", "task_type")} <= indexes
    model = dict(conn.execute("SELECT * FROM by_model").fetchone())
    assert (model["total"], model["success"], model["total_errors"], model["other_errors"]) == (2, 1, 1, 1)


def test_a_repair_rebuilds_and_audit_checks_the_file(tmp_path):
    db, out = tmp_path / "e.db", tmp_path / "m.json"
    with EventLog.open(db) as log:
        log.append([completed(1, model="dsv3"), completed(2)])
        assert project(db, out).results_rebuilt
        log.append([completed(3)])
        assert not project(db, out).results_rebuilt
        log.append([ev.AliasDefined(recorded_at=ts(5), alias="dsv3", canonical="DeepSeek-V3-0324")])
    assert project(db, out).results_rebuilt
    conn = sqlite3.connect(tmp_path / "results.db")
    assert conn.execute("SELECT DISTINCT model FROM tests").fetchall() == [("DeepSeek-V3-0324",)]
    assert audit(db, out).clean
    with conn:
        conn.execute("UPDATE tests SET outcome = 'failure' WHERE event_id = 'c1'")
    conn.close()
    report = audit(db, out)
    assert any("results.db: table tests differs" in f for f in report.findings)
    project(db, out, rebuild=True)
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.execute("UPDATE cells SET final_score = final_score + 0.5")
    conn.close()
    assert any("results.db: table cells differs" in f for f in audit(db, out).findings)
    project(db, out, rebuild=True)
    assert audit(db, out).clean
    (tmp_path / "results.db").write_bytes(b"not a database at all, not even close to one")
    assert any("results.db" in f for f in audit(db, out).findings)
    assert project(db, out).results_rebuilt  # an unusable file is rebuilt, not an error
    assert audit(db, out).clean


def _arith(i: int, metrics: dict[str, float] | None, outcome: str = "full_success"):
    return completion(**{**_test(i, "c"), **dict(
        suite="arith", task_type="addition", outcome=outcome, execution_time=1.0, turns=1,
        error_category=None if outcome == "full_success" else "other", metrics=metrics or {})})


def _declares(i: int, *metrics: tuple[str, str]) -> ev.RunStarted:
    """A run.started of the arith suite declaring (name, aggregate) metrics."""
    return ev.RunStarted(run_id=f"run-{i}", argv=["run"], config_digest="d", recorded_at=ts(i),
                         event_id=f"rs{i}", plan=ev.PlanSummary(tests=1, shards=1, models=[]),
                         suite="arith", metrics=[ev.Metric(name=n, aggregate=a) for n, a in metrics])


def test_declared_metrics_aggregate_as_declared_over_any_split():
    """A run's declarations give a metric its column before any test carries it, and its
    aggregate: a sum is `total_<name>` in the views and master_database.json alike. The
    first declaration of a name holds (the workflow suite's metrics stay means), and a
    metric tests carried undeclared (a mean) becomes a sum when a run declares it so; an
    incremental update over any split equals a fresh fold."""
    events = [_arith(0, {"late": 2.0}),  # undeclared: a mean, for now
              _declares(1, ("accuracy", "mean"), ("off", "sum")),
              _arith(2, {"accuracy": 1.0}),
              _arith(3, {"accuracy": 0.0, "off": 1.0}, outcome="failure"),
              _declares(4, ("accuracy", "sum"), ("late", "sum"), ("final_score", "sum")),
              _arith(5, {"off": 1.0, "late": 3.0, "final_score": 0.5})]
    for splits in ([], [1], [2], [4], [5], [1, 3, 5]):
        with tempfile.TemporaryDirectory() as tmp:
            path = project_at_splits(events, Path(tmp), splits)
            with sqlite3.connect(path) as conn, EventLog.open(Path(tmp) / "events.db") as log:
                fresh = fresh_results(log, log.last_seq())
                assert dump(conn) == dump(fresh.conn), splits
                assert conn.execute("SELECT * FROM metrics ORDER BY position").fetchall() == \
                    fresh.conn.execute("SELECT * FROM metrics ORDER BY position").fetchall()
                cols = [r[1] for r in conn.execute("PRAGMA table_info(tests)")]
                assert cols[len(rdb.TEST_COLUMNS):] == ["late", "accuracy", "off"], splits
                assert conn.execute("SELECT name, suite, seq, aggregate FROM metrics"
                                    " ORDER BY position").fetchall() == [
                    ("late", "arith", 1, "sum"), ("accuracy", "arith", 2, "mean"),
                    ("off", "arith", 2, "sum")]
                doc = json.loads((Path(tmp) / "master_database.json").read_bytes())
                assert_views_match(conn, doc)
                stats = doc["models"]["DeepSeek-V3-0324"]["overall_stats"]
                assert (stats["avg_accuracy"], stats["total_off"], stats["total_late"],
                        stats["avg_final_score"]) == (0.25, 2.0, 5.0, 0.125)
                assert not {"avg_off", "avg_late", "total_accuracy", "total_final_score"} & set(stats)
                conn.row_factory = None
                assert conn.execute("SELECT avg_accuracy, total_off, total_late, avg_final_score"
                                    " FROM by_model").fetchone() == (0.25, 2.0, 5.0, 0.125)
            assert audit(Path(tmp) / "events.db", Path(tmp) / "master_database.json").findings == []


def test_a_second_suites_metrics_are_columns_and_view_means_over_any_split():
    """A suite's own metrics get a column each (one named as a column is renamed), the
    views average them as master_database.json does, and an incremental update over any
    split (one that must rebuild included) equals a fresh fold."""
    events = [completed(0), completed(1),
              _arith(2, None, outcome="failure"),  # its suite's first test has no metrics
              _arith(3, {"accuracy": 1.0, "answer_chars": 3.0}),
              _arith(4, {"accuracy": 0.0, "answer_chars": 5.0, "turns": 2.0}),
              completed(5)]
    for splits in ([], [2], [3], [4, 5], [1, 3, 5]):
        with tempfile.TemporaryDirectory() as tmp:
            path = project_at_splits(events, Path(tmp), splits)
            with sqlite3.connect(path) as conn, EventLog.open(Path(tmp) / "events.db") as log:
                fresh = fresh_results(log, log.last_seq())
                assert dump(conn) == dump(fresh.conn), splits
                cols = [r[1] for r in conn.execute("PRAGMA table_info(tests)")]
                assert cols[len(rdb.TEST_COLUMNS):] == ["accuracy", "answer_chars", "metric_turns"]
                assert conn.execute("SELECT name, column_name, suite, position FROM metrics"
                                    " ORDER BY position").fetchall() == [
                    ("accuracy", "accuracy", "arith", 0),
                    ("answer_chars", "answer_chars", "arith", 1),
                    ("turns", "metric_turns", "arith", 2)]
                assert conn.execute("SELECT accuracy, answer_chars, metric_turns FROM tests"
                                    " ORDER BY seq").fetchall() == [
                    (None, None, None), (None, None, None), (None, None, None),
                    (1.0, 3.0, None), (0.0, 5.0, 2.0), (None, None, None)]
                doc = json.loads((Path(tmp) / "master_database.json").read_bytes())
                assert_views_match(conn, doc)
                conn.row_factory = None
                # the arith tests' means over the arith tests (three), as master_database
                arith = conn.execute("SELECT avg_accuracy, avg_answer_chars FROM by_task_type"
                                     " WHERE task_type = 'addition'").fetchone()
                assert arith == (1 / 3, 8 / 3)
            assert audit(Path(tmp) / "events.db", Path(tmp) / "master_database.json").findings == []


def test_a_metrics_table_from_before_declarations_takes_them_on(tmp_path):
    """A results.db whose `metrics` table predates declarations (no `aggregate` column)
    gets the column when a run first declares a metric, and then says what a fresh fold
    says."""
    first = [_arith(0, {"late": 2.0})]
    db, out = append_and_project(first, tmp_path)
    results = tmp_path / "results.db"
    with sqlite3.connect(results) as conn:
        conn.execute("ALTER TABLE metrics DROP COLUMN aggregate")  # as an older ultra made it
    with EventLog.open(db) as log:
        log.append([_declares(1, ("late", "sum")), _arith(2, {"late": 3.0})])
    project(db, out)
    with sqlite3.connect(results) as conn, EventLog.open(db) as log:
        fresh = fresh_results(log, log.last_seq())
        assert dump(conn) == dump(fresh.conn)
        assert conn.execute("SELECT name, aggregate FROM metrics").fetchall() == [("late", "sum")]
        assert conn.execute("SELECT total_late FROM by_model").fetchone() == (5.0,)
    assert json.loads(out.read_bytes())["summary"]["total_late"] == 5.0
