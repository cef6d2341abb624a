"""`ultra report`: every number of every table equals one computed here from `ultra events`.

A demo log (several models, routes, runs, prompt types, rates, difficulties and task
types, with errored attempts, a duplicate, a retraction and an alias) is written to a real
SQLite log; the CLI runs as a real process. The reference below reads the events back
with `ultra events` and computes each table on its own, in plain Python.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest
from storage_helpers import ts

from ultra import events as ev
from ultra.naming import canonical_model
from ultra.eventlog.store import EventLog

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[providers.p]
kind = "sim"
shape = "openai"
keys = 3

[models."qwen2.5-7b-instruct"]
provider = "p"
family = "qwen2.5"
params_b = 7

[models."qwen2.5-72b-instruct"]
provider = "p"
family = "qwen2.5"
params_b = 72
input_price = 0.4
output_price = 1.2

[models."DeepSeek-V3-0324"]
provider = "p"

[models."gpt-4o-mini"]
provider = "p"
"""
MODELS = {  # name as recorded -> routes
    "qwen2.5-7b-instruct": ["qwen2.5-7b-instruct-key0", "qwen2.5-7b-instruct-key1"],
    "qwen2.5-72b-instruct": ["qwen2.5-72b-instruct"],
    "DeepSeek-V3-0324": ["DeepSeek-V3-0324", "DeepSeek-V3-0324-2"],
    "team-mini": ["gpt-4o-mini"],  # an alias, defined below
}
PROMPTS = ["baseline", "cot", "optimal", "flawed_sequence_disorder", "flawed_missing_step",
           "flawed_tool_misuse"]
RATES = [0.6, 0.8, 1.0]
DIFFS = ["easy", "medium"]
TASKS = ["simple_task", "data_pipeline", "api_integration"]


def demo_events() -> list[ev.Event]:
    rng = random.Random(7)
    out: list[ev.Event] = []
    i = 0

    def when() -> str:
        nonlocal i
        i += 1
        return ts(i)

    for run in ("run-a", "run-b"):
        for model, routes in MODELS.items():
            skill = {"qwen2.5-7b-instruct": 0.5, "qwen2.5-72b-instruct": 0.8,
                     "DeepSeek-V3-0324": 0.7, "team-mini": 0.6}[model] + (0.1 if run == "run-b" else 0)
            for n in range(rng.randint(55, 70)):
                route = routes[n % len(routes)]
                fields = dict(
                    run_id=run, shard_id=f"{model}@{route}", test_key=f"{run}-{model}-{n}",
                    model=route if route.startswith(model) else model, instance=route, provider="p",
                    simulated=True, task_id=f"t{n}", task_type=rng.choice(TASKS),
                    difficulty=rng.choice(DIFFS), prompt_type=rng.choice(PROMPTS),
                    tool_success_rate=rng.choice(RATES), recorded_at=when(),
                    execution_time=rng.uniform(0.1, 3.0),
                )
                if rng.random() < 0.06:
                    out.append(ev.TestErrored(reason=rng.choice(["rate_limited", "timeout"]), **fields))
                    continue
                r = rng.random()
                outcome = "full_success" if r < skill * 0.7 else "partial_success" if r < skill else "failure"
                category = None if outcome == "full_success" else rng.choice(ev.ERROR_CATEGORIES)
                out.append(ev.TestCompleted(
                    result=ev.TestResult(
                        outcome=outcome, error_category=category, metrics={"final_score": rng.random()},
                        turns=rng.randint(1, 10), tool_calls=rng.randint(0, 8), tool_coverage=rng.random()),
                    usage=ev.Usage(prompt_tokens=rng.randint(100, 5000), completion_tokens=rng.randint(10, 900)),
                    **fields))
    first = next(e for e in out if isinstance(e, ev.TestCompleted))
    out.append(msgspec.structs.replace(first, event_id="dup-1", recorded_at=when(), result=ev.TestResult(
        outcome="failure", error_category="other")))  # a duplicate: counts once
    selector = ev.Selector(run_id="run-a", instance="DeepSeek-V3-0324-2")
    out.append(ev.TestsRetracted(recorded_at=when(), reason="bad shard", selector=selector, withdraws=[
        e.event_id for e in out if isinstance(e, ev.TestCompleted)
        and (e.run_id, e.instance) == ("run-a", "DeepSeek-V3-0324-2")]))
    out.append(ev.AliasDefined(recorded_at=when(), alias="team-mini", canonical="gpt-4o-mini"))
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("report")
    with EventLog.open(tmp / "events.db") as log:
        log.append(demo_events())
    (tmp / "config.toml").write_text(CONFIG)
    ultra(tmp, "project")
    lines = ultra(tmp, "events").stdout.splitlines()
    events = [ev.decode(line) for line in lines]
    return {"tmp": tmp, "events": events}


def ultra(tmp: Path, *args: str, check: bool = True, columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}
    common = ["--db", str(tmp / "events.db")]
    if args[0] in ("project", "report"):
        common += ["--out", str(tmp / "master_database.json")]
    if args[0] == "report":
        common += ["--config", str(tmp / "config.toml")]
    p = subprocess.run([sys.executable, "-m", "ultra", *args, *common], capture_output=True,
                       text=True, env=env, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def report(demo: dict, *args: str) -> list[dict[str, Any]]:
    out = ultra(demo["tmp"], "report", *args, "--format", "json").stdout
    return json.loads(out)["tables"]


# ---- the reference: from the events alone ------------------------------------------------


def counted(events: list[ev.Event]) -> tuple[list[ev.TestCompleted], dict[str, str]]:
    aliases = {e.alias: e.canonical for e in events if isinstance(e, ev.AliasDefined)}
    retractions = [e for e in events if isinstance(e, ev.TestsRetracted)]

    def removed(c: ev.TestCompleted) -> bool:
        return any(c.event_id in r.withdraws for r in retractions)

    seen: set[str] = set()
    out = []
    for e in events:
        if isinstance(e, ev.TestCompleted) and not removed(e) and e.test_key not in seen:
            seen.add(e.test_key)
            out.append(e)
    return out, aliases


def wilson(k: int, n: int) -> list[float]:
    z = 1.959963984540054
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [mid - half, mid + half]


def by(tests: list[ev.TestCompleted], aliases: dict[str, str], *keys: str) -> dict[tuple, list]:
    groups: dict[tuple, list] = defaultdict(list)
    for t in tests:
        groups[(canonical_model(t.model, aliases), *(getattr(t, k) for k in keys))].append(t)
    return groups


def success(ts_: list[ev.TestCompleted]) -> float:
    return sum(t.result.outcome != "failure" for t in ts_) / len(ts_)


def close(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def assert_rows(table: dict, want: dict[str, dict[str, Any]]) -> None:
    rows = {r["model"]: r for r in table["rows"]}
    assert set(rows) == set(want), table["name"]
    for model, cells in want.items():
        for key, value in cells.items():
            assert close(rows[model][key], value), (table["name"], model, key, rows[model][key], value)
        assert set(rows[model]) == set(cells) | {"model"}  # every column is checked


# ---- the tests ----------------------------------------------------------------------------


def test_overview_numbers_come_from_the_events(demo):
    tests, aliases = counted(demo["events"])
    errored = defaultdict(int)
    for e in demo["events"]:
        if isinstance(e, ev.TestErrored):
            errored[canonical_model(e.model, aliases)] += 1
    want = {}
    for (model,), ts_ in by(tests, aliases).items():
        n = len(ts_)
        k = {o: sum(t.result.outcome == o for t in ts_) for o in ("full_success", "partial_success", "failure")}
        want[model] = {
            "tests": n, "success_rate": success(ts_),
            "success_ci": wilson(k["full_success"] + k["partial_success"], n),
            "full_success_rate": k["full_success"] / n, "full_success_ci": wilson(k["full_success"], n),
            "partial_rate": k["partial_success"] / n, "partial_ci": wilson(k["partial_success"], n),
            "failure_rate": k["failure"] / n, "failure_ci": wilson(k["failure"], n),
            "avg_final_score": math.fsum(t.result.metrics["final_score"] for t in ts_) / n,
            "avg_turns": sum(t.result.turns for t in ts_) / n,
            "avg_tokens": sum(t.usage.prompt_tokens + t.usage.completion_tokens for t in ts_) / n,
            "cost": (sum(t.usage.prompt_tokens * 0.4 + t.usage.completion_tokens * 1.2 for t in ts_) / 1e6
                     if model == "qwen2.5-72b-instruct" else None),
            "errored": errored[model],
        }
    [table] = report(demo, "overview")
    assert set(want) == {"qwen2.5-7b-instruct", "qwen2.5-72b-instruct", "DeepSeek-V3-0324", "gpt-4o-mini"}
    assert_rows(table, want)


@pytest.mark.parametrize("name,dim,only", [
    ("prompt-types", "prompt_type", lambda v: not v.startswith("flawed_")),
    ("flaws", "prompt_type", lambda v: v.startswith("flawed_")),
    ("tool-reliability", "tool_success_rate", lambda v: True),
    ("difficulty", "difficulty", lambda v: True),
    ("task-types", "task_type", lambda v: True),
])
def test_every_pivot_cell_comes_from_the_events(demo, name, dim, only):
    tests, aliases = counted(demo["events"])
    cells = by(tests, aliases, dim)
    want: dict[str, dict[str, Any]] = {}
    for (model, value), ts_ in cells.items():
        want.setdefault(model, {"tests": sum(len(v) for (m, _), v in cells.items() if m == model)})
        if only(value):
            key = str(round(value, 4)) if isinstance(value, float) else value
            want[model][key] = success(ts_)
    if name == "flaws":
        for cells_ in want.values():
            rates = [v for k, v in cells_.items() if k.startswith("flawed_")]
            cells_["adaptability"] = sum(rates) / len(rates)
    if name == "tool-reliability":
        for cells_ in want.values():
            cells_["drop"] = cells_["1.0"] - cells_["0.6"]
    [table] = report(demo, name)
    assert_rows(table, want)


def test_scale_orders_a_family_by_size(demo):
    tests, aliases = counted(demo["events"])
    groups = by(tests, aliases)
    [table] = report(demo, "scale")
    assert [(r["family"], r["model"], r["params_b"]) for r in table["rows"]] == [
        ("qwen2.5", "qwen2.5-7b-instruct", 7), ("qwen2.5", "qwen2.5-72b-instruct", 72)]
    for row in table["rows"]:
        ts_ = groups[(row["model"],)]
        k = sum(t.result.outcome != "failure" for t in ts_)
        assert close([row["tests"], row["success_rate"], row["success_ci"]], [len(ts_), k / len(ts_), wilson(k, len(ts_))])
        assert close(row["avg_final_score"], math.fsum(t.result.metrics["final_score"] for t in ts_) / len(ts_))
    assert any("DeepSeek-V3-0324" in n for n in table["notes"])  # no size in the config: said so


def test_error_shares_come_from_the_events(demo):
    tests, aliases = counted(demo["events"])
    want = {}
    for (model,), ts_ in by(tests, aliases).items():
        cats = [t.result.error_category for t in ts_ if t.result.error_category]
        want[model] = {"tests": len(ts_), "errors": len(cats),
                       **{c: cats.count(c) / len(cats) for c in ev.ERROR_CATEGORIES}}
    [table] = report(demo, "errors")
    assert_rows(table, want)


def test_selection_flags_and_exclude_timeouts(demo):
    tests, aliases = counted(demo["events"])
    chosen = [t for t in tests if t.run_id == "run-b" and t.prompt_type in ("baseline", "cot")
              and t.difficulty == "easy" and t.tool_success_rate in (0.8, 1.0)
              and canonical_model(t.model, aliases) in ("gpt-4o-mini", "DeepSeek-V3-0324")]
    [table] = report(demo, "overview", "--models", "team-mini,DeepSeek-V3-0324-2", "--run", "run-b",
                     "--prompt-types", "baseline,cot", "--difficulty", "easy",
                     "--tool-success-rate", "0.8", "--tool-success-rate", "1.0")
    got = {r["model"]: (r["tests"], r["success_rate"]) for r in table["rows"]}
    assert got == {m: (len(v), success(v)) for (m,), v in by(chosen, aliases).items()}

    kept = [t for t in tests if not (t.result.outcome == "failure" and t.result.error_category == "timeout")]
    [table] = report(demo, "overview", "--exclude-timeouts")
    got = {r["model"]: (r["tests"], r["success_rate"]) for r in table["rows"]}
    assert got == {m: (len(v), success(v)) for (m,), v in by(kept, aliases).items()}
    assert any(f"{len(tests) - len(kept)} tests that failed by timeout" in n for n in table["notes"])


def test_compare_two_runs_with_a_two_proportion_test(demo):
    tests, aliases = counted(demo["events"])
    [table] = report(demo, "--compare", "run-a", "run-b", "--unpaired")
    assert table["name"] == "compare"
    for row in table["rows"]:
        a = [t for t in tests if t.run_id == "run-a" and canonical_model(t.model, aliases) == row["model"]]
        b = [t for t in tests if t.run_id == "run-b" and canonical_model(t.model, aliases) == row["model"]]
        ka, kb = (sum(t.result.outcome != "failure" for t in x) for x in (a, b))
        pooled = (ka + kb) / (len(a) + len(b))
        z = (ka / len(a) - kb / len(b)) / math.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
        p = math.erfc(abs(z) / math.sqrt(2))
        assert close([row["tests_a"], row["success_a"], row["tests_b"], row["success_b"]],
                     [len(a), ka / len(a), len(b), kb / len(b)])
        assert close(row["delta"], kb / len(b) - ka / len(a)) and close(row["p_value"], p)
        assert row["significant"] == ("*" if p < 0.05 else "")


def test_terminal_tables_fit_80_columns_and_show_the_same_numbers(demo):
    narrow = ultra(demo["tmp"], "report", "all", columns=80).stdout
    assert max(len(line) for line in narrow.splitlines()) <= 80
    text = ultra(demo["tmp"], "report", "all").stdout  # 200 columns: one block a table
    for title in ("Overview", "prompt type", "flawed", "tool reliability", "difficulty", "task type",
                  "Scale", "Error categories"):
        assert title in text and title in narrow
    [table] = report(demo, "overview")
    assert all(f"\n{row['model']} " in narrow for row in table["rows"])  # whole names
    overview = text.split("\n\n")[0]
    for row in table["rows"]:
        line = next(ln for ln in overview.splitlines() if ln.split()[0] == row["model"]).split()
        lo, hi = row["success_ci"]
        assert line[1:8] == [str(row["tests"]), f"{100 * row['success_rate']:.1f}",
                             f"{100 * lo:.1f}–{100 * hi:.1f}", f"{100 * row['full_success_rate']:.1f}",
                             f"{100 * row['failure_rate']:.1f}", f"{row['avg_final_score']:.3f}",
                             f"{row['avg_turns']:.1f}"]
        assert line[-1] == str(row["errored"])


def test_markdown_and_csv_carry_the_same_rows(demo):
    md = ultra(demo["tmp"], "report", "errors", "--format", "markdown").stdout
    csv_text = ultra(demo["tmp"], "report", "errors", "--format", "csv").stdout
    [table] = report(demo, "errors")
    assert md.count("\n| ") == len(table["rows"]) + 1
    lines = csv_text.strip().splitlines()
    assert lines[0].split(",")[:3] == ["model", "tests", "errors"]
    for line, row in zip(lines[1:], table["rows"]):
        values = line.split(",")
        assert values[0] == row["model"] and int(values[2]) == row["errors"]
        assert close(float(values[3]), row["tool_call_format"])


def test_output_file(demo, tmp_path):
    target = tmp_path / "r.md"
    p = ultra(demo["tmp"], "report", "difficulty", "--format", "markdown", "--output", str(target))
    assert "## Success by difficulty" in target.read_text() and str(target) in p.stdout


@pytest.mark.parametrize("args,message", [
    (("--models", "nope-model"), "unknown model 'nope-model'"),
    (("--run", "no-such-run"), "unknown run id 'no-such-run'"),
    (("--compare", "run-a", "no-such-run"), "unknown run id 'no-such-run'"),
    (("bogus-table",), "unknown table 'bogus-table'"),
    (("--format", "pdf"), "--format 'pdf'"),
    (("--prompt-types", "nothing"), "no counted tests match"),
])
def test_bad_input_is_one_line_and_exit_2(demo, args, message):
    p = ultra(demo["tmp"], "report", *args, check=False)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and message in p.stderr and "Traceback" not in p.stderr


def test_an_empty_log_and_no_log_are_one_line_and_exit_2(tmp_path):
    EventLog.open(tmp_path / "events.db").close()
    (tmp_path / "config.toml").write_text(CONFIG)
    p = ultra(tmp_path, "report", check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no counted tests" in p.stderr
    os.unlink(tmp_path / "events.db")
    os.unlink(tmp_path / "results.db")
    p = ultra(tmp_path, "report", check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no results database" in p.stderr


def test_a_results_db_of_another_layout_without_its_log_is_one_line_and_exit_2(demo, tmp_path):
    import shutil
    import sqlite3

    shutil.copy(demo["tmp"] / "results.db", tmp_path / "results.db")
    (tmp_path / "config.toml").write_text(CONFIG)
    with sqlite3.connect(tmp_path / "results.db") as conn:
        state = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()[0])
        ok = ultra(tmp_path, "report", check=False)  # no log beside it: read as it is
        assert ok.returncode == 0 and "qwen2.5-72b-instruct" in ok.stdout
        conn.execute("UPDATE meta SET value = ? WHERE key = 'state'",
                     (json.dumps({**state, "version": 1}),))
    conn.close()
    p = ultra(tmp_path, "report", check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "another version" in p.stderr
