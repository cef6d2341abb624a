"""`ultra report` and its projections, as a user of an evaluation tool relies on them: a
projection knows its log; simulated results are marked in every format; names are safe in
every format; every rate carries its n and interval; every format says what it was made
from; conditions are never added together; comparisons pair tests; paper-ready output.

Logs are real SQLite files; the CLI runs as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import completion, ts

from ultra import events as ev
from ultra.eventlog.store import EventLog

ROOT = Path(__file__).resolve().parent.parent


def ultra(*args: str, check: bool = True, cwd: Path | None = None,
          columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}
    p = subprocess.run([sys.executable, "-m", "ultra", *args], capture_output=True, text=True,
                       env=env, timeout=240, cwd=cwd or ROOT)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def completions(prefix: str, model: str, n: int, *, run: str = "run-1", start: int = 1,
             ok: int | None = None, simulated: bool = False, **extra: Any) -> list[ev.Event]:
    """`n` completions of `model`, the first `ok` of them successes."""
    ok = n // 2 if ok is None else ok
    out: list[ev.Event] = []
    for i in range(n):
        fields = dict(event_id=f"{prefix}{i}", recorded_at=ts(start + i), run_id=run,
                      shard_id=f"{model}@{run}", test_key=f"{prefix}key{i}", model=model,
                      instance=model, provider="p", task_id=f"t{i}", task_type="simple_task",
                      difficulty="easy", prompt_type="baseline", tool_success_rate=0.8,
                      simulated=simulated, final_score=0.5)
        fields.update(extra)
        if i < ok:
            out.append(completion(outcome="full_success", **fields))
        else:
            out.append(completion(outcome="failure", error_category="other", **fields))
    return out


def log_with(path: Path, events: list[ev.Event]) -> Path:
    with EventLog.open(path) as log:
        log.append(events)
    return path


def json_report(db: Path, out: Path, *args: str) -> tuple[dict, str]:
    p = ultra("report", *args, "--db", str(db), "--out", str(out), "--format", "json")
    return json.loads(p.stdout), p.stderr


# ---- 1. a projection knows its log --------------------------------------------------------


def test_two_logs_beside_one_out_directory_each_report_shows_only_its_own_tests(tmp_path):
    a = log_with(tmp_path / "a.db", completions("a", "model-a", 4))
    # b is the longer log: an incremental fold would have taken its events after seq 4
    b = log_with(tmp_path / "b.db", completions("b", "model-b", 9))
    out = tmp_path / "shared" / "master_database.json"
    doc, err = json_report(a, out, "overview")
    assert [r["model"] for r in doc["tables"][0]["rows"]] == ["model-a"]
    doc, err = json_report(b, out, "overview")
    [row] = doc["tables"][0]["rows"]
    assert (row["model"], row["tests"]) == ("model-b", 9)
    assert "another event log" in err and "rebuilding" in err and err.count("\n") >= 1
    doc, err = json_report(a, out, "overview")
    [row] = doc["tables"][0]["rows"]
    assert (row["model"], row["tests"]) == ("model-a", 4)
    assert "another event log" in err
    # master_database.json too: its fold state lives in each log, and names the chain head
    ultra("project", "--db", str(b), "--out", str(out))
    data = json.loads(out.read_text())
    assert list(data["models"]) == ["model-b"] and data["summary"]["total_tests"] == 9
    again = ultra("report", "--db", str(b), "--out", str(out), "--format", "json")
    assert "another event log" not in again.stderr  # the same log: nothing to say


# ---- 3. simulated everywhere ---------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(demo, tmp_path_factory) -> Path:
    """A copy of the session's bundled demo run (tests/conftest.py; the simulator answered)."""
    assert "SIMULATED" in demo.stdout  # the run summary says so
    tmp = tmp_path_factory.mktemp("demo")
    demo.copy_to(tmp)
    return tmp


def test_the_demo_run_is_marked_simulated_in_every_format(demo_run):
    for fmt in ("table", "markdown", "json", "html", "latex"):
        text = ultra("report", "all", "--format", fmt, cwd=demo_run).stdout
        assert "simulated" in text.lower(), fmt
    text = ultra("report", "overview", "--format", "csv", cwd=demo_run).stdout
    assert "simulated" in text.lower()
    doc = json.loads(ultra("report", "all", "--format", "json", cwd=demo_run).stdout)
    for t in doc["tables"]:
        assert t["simulated"]["state"] == "all" and t["simulated"]["tests"] > 0, t["name"]
        assert all(r["simulated_tests"] == r["tests"] for r in t["row_info"])
    md = ultra("report", "all", "--format", "markdown", cwd=demo_run).stdout
    assert md.count("SIMULATED") == md.count("\n## ") + md.startswith("## ")  # every table
    text = ultra("report", "errors", "--format", "csv", cwd=demo_run).stdout
    lines = text.split("\n\n")[0].splitlines()  # the table (its provenance follows)
    assert lines[0].endswith(",simulated_share") and all(ln.endswith(",1.0") for ln in lines[1:])
    run = ultra("run", "--progress", "none", "--json", cwd=demo_run)  # all taken: resumes
    assert "simulated" in json.loads(run.stdout)


def test_a_table_that_mixes_simulated_and_real_tests_says_so(tmp_path):
    db = log_with(tmp_path / "events.db", [*completions("s", "model-sim", 6, simulated=True),
                                           *completions("r", "model-real", 6, start=10)])
    out = tmp_path / "master_database.json"
    doc, _ = json_report(db, out, "overview")
    [t] = doc["tables"]
    assert t["simulated"] == {"state": "mixed", "tests": 6, "of": 12}
    assert any("mixes simulated and real" in n for n in t["notes"])
    text = ultra("report", "--db", str(db), "--out", str(out)).stdout
    marks = sorted(ln.split()[-1] for ln in text.splitlines()
                   if ln.startswith("mode") and ln.split()[0] != "model")
    assert marks == ["no", "yes"]
    md = ultra("report", "--db", str(db), "--out", str(out), "--format", "markdown").stdout
    assert "| simulated |" in md and "mixes simulated and real" in md


# ---- 8. safe output ------------------------------------------------------------------------

NASTY = ['=HYPERLINK("http://evil.example","x")', "+1+2", "-2+3", "@SUM(A1)",
         "<script>alert(1)</script>", "a|b*c_d"]


@pytest.fixture(scope="module")
def nasty(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("nasty")
    events: list[ev.Event] = []
    for i, name in enumerate(NASTY):
        events += completions(f"n{i}-", name, 3, start=10 * i + 1)
    return log_with(tmp / "events.db", events), tmp / "master_database.json"


def test_csv_cells_that_start_a_formula_are_neutralised(nasty):
    import csv
    import io

    db, out = nasty
    text = ultra("report", "--db", str(db), "--out", str(out), "--format", "csv").stdout
    rows = list(csv.reader(io.StringIO(text.split("\n\n")[0])))
    names = [r[0] for r in rows[1:]]
    models = json.loads(ultra("report", "--db", str(db), "--out", str(out), "--format",
                              "json").stdout)["tables"][0]["rows"]
    assert len(names) == len(NASTY)
    for name, row in zip(names, models):
        assert not name.startswith(("=", "+", "-", "@"))
        assert name == ("'" + row["model"] if row["model"][0] in "=+-@" else row["model"])
    assert "'=HYPERLINK" in text


def test_markdown_and_html_escape_names(nasty):
    db, out = nasty
    md = ultra("report", "all", "--db", str(db), "--out", str(out), "--format", "markdown").stdout
    assert "<script>" not in md
    assert "&lt;script&gt;" in md and "a\\|b\\*c\\_d" in md
    page = ultra("report", "--db", str(db), "--out", str(out), "--format", "html").stdout
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# ---- 5. every cell with its n and interval ---------------------------------------------------


def test_every_rate_of_every_table_has_n_and_an_interval_in_json_and_csv(demo_run):
    import csv
    import io

    from ultra.report.intervals import wilson

    doc = json.loads(ultra("report", "all", "--prompt-types", "all", "--format", "json",
                           cwd=demo_run).stdout)
    checked = 0
    for t in doc["tables"]:
        rates = [c["key"] for c in t["columns"] if c["kind"] == "rate"]
        assert rates, t["name"]
        for row, info in zip(t["rows"], t["row_info"], strict=True):
            for key in rates:
                if row[key] is None:
                    continue
                c = info["cells"][key]
                assert c["n"] > 0 and c["ci_low"] <= row[key] <= c["ci_high"], (t["name"], key)
                if key != "adaptability":  # a mean of rates; the others are proportions
                    assert c["k"] / c["n"] == pytest.approx(row[key])
                    assert [c["ci_low"], c["ci_high"]] == pytest.approx(list(wilson(c["k"], c["n"])))
                checked += 1
    assert checked > 20
    text = ultra("report", "difficulty", "--format", "csv", cwd=demo_run).stdout
    [header, *rows] = list(csv.reader(io.StringIO(text.split("\n\n")[0])))
    assert {"easy_n", "easy_ci_low", "easy_ci_high"} <= set(header)
    assert all(int(r[header.index("easy_n")]) == int(r[header.index("tests")]) for r in rows)


def test_text_formats_show_n_below_30_tests_or_on_intervals(demo_run):
    # the demo: 30 tests a model, 10 in each prompt type cell
    small = ultra("report", "prompt-types", cwd=demo_run).stdout
    assert "(10)" in small and "fewer than 30 tests" in small
    big = ultra("report", "overview", cwd=demo_run).stdout
    assert "(30)" not in big
    shown = ultra("report", "overview", "--intervals", "--format", "markdown", cwd=demo_run).stdout
    assert "(30)" in shown and "[" in shown.split("| sim-good |")[1].split("\n")[0]


# ---- 6. provenance ---------------------------------------------------------------------------


def test_every_format_says_what_it_was_made_from(demo_run):
    doc = json.loads(ultra("report", "--format", "json", cwd=demo_run).stdout)
    p = doc["provenance"]
    [run] = p["runs"]
    assert run["started_at"] < run["finished_at"] and run["interrupted"] is False
    assert p["ultra_version"] and len(p["chain_head"]) == 64 and p["simulated_share"] == 1.0
    last = ultra("events", cwd=demo_run).stdout.splitlines()[-1]
    assert p["generated_at"] == json.loads(last)["recorded_at"]  # the events' time
    assert p["selection"]["models"] is None
    for fmt in ("table", "markdown", "csv", "html", "latex"):
        text = ultra("report", "--format", fmt, cwd=demo_run).stdout
        for fact in (run["run_id"], p["chain_head"], p["ultra_version"], p["generated_at"],
                     "simulated", "selection"):
            assert fact in text, (fmt, fact)


def test_ultra_runs_after_a_normal_and_an_interrupted_run(demo_run, tmp_path):
    import shutil
    import signal
    import time

    from collection_helpers import popen_ultra

    shutil.copytree(demo_run / "ultra-data", tmp_path / "ultra-data")
    db = tmp_path / "ultra-data" / "events.db"
    p = popen_ultra("run", "--progress", "none", "--max-turns", "4", "--num-instances", "40",
                    cwd=tmp_path)
    try:
        before = EventLog.open(db, create=False)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until the second run has completed tests
                n = sum(1 for _ in before.stream(types=("test.completed",)))
                if n > 125:
                    break
                time.sleep(0.2)
        finally:
            before.close()
        os.killpg(p.pid, signal.SIGINT)
        p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130
    found = json.loads(ultra("runs", "--json", cwd=tmp_path).stdout)
    normal, *resumed, cut = found  # (the demo's resumed run, if it ran, took no test)
    assert all(r["completed"] == 0 for r in resumed)
    assert normal["interrupted"] is False and cut["interrupted"] is True
    assert normal["completed"] == 120 and normal["errored"] == 0 and normal["simulated"] == 120
    assert cut["completed"] > 0 and cut["finished_at"] > cut["started_at"]
    assert normal["models"] == ["sim-good", "sim-medium", "sim-strong", "sim-weak"]
    text = ultra("runs", cwd=tmp_path).stdout
    assert normal["run_id"] in text and cut["run_id"] in text and "yes" in text


# ---- 2. conditions -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_conditions(demo, tmp_path_factory) -> Path:
    """The demo run (the session's, copied), then the same tests with --max-turns 4 (one log)."""
    tmp = tmp_path_factory.mktemp("conditions")
    demo.copy_to(tmp)
    ultra("run", "--progress", "none", "--max-turns", "4", cwd=tmp)
    return tmp


def test_no_table_adds_two_conditions_and_each_is_labelled(two_conditions):
    runs = json.loads(ultra("runs", "--json", cwd=two_conditions).stdout)
    assert [r["completed"] for r in runs] == [120, 120]
    doc = json.loads(ultra("report", "all", "--format", "json", cwd=two_conditions).stdout)
    labels = {t["condition"] for t in doc["tables"]}
    assert labels == {"default", "max_turns=4"}
    for t in doc["tables"]:
        assert f"[{t['condition']}]" in t["title"]
        for row in t["rows"]:
            if "tests" in row:
                assert row["tests"] == 30, (t["name"], t["condition"])  # never 60
    assert {c["label"]: c["tests"] for c in doc["provenance"]["conditions"]} == \
        {"default": 120, "max_turns=4": 120}
    text = ultra("report", cwd=two_conditions).stdout
    assert "Overview: per model [default]" in text and "Overview: per model [max_turns=4]" in text
    one = json.loads(ultra("report", "--condition", "max_turns=4", "--format", "json",
                           cwd=two_conditions).stdout)
    [t] = one["tables"]
    assert t["condition"] is None and all(r["tests"] == 30 for r in t["rows"])
    default = {r["model"]: r["success_rate"] for r in next(
        x for x in doc["tables"] if x["name"] == "overview" and x["condition"] == "default")["rows"]}
    assert {r["model"]: r["success_rate"] for r in t["rows"]} != default
    bad = ultra("report", "--condition", "max_turns=9", check=False, cwd=two_conditions)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown condition" in bad.stderr
    events = [json.loads(x) for x in ultra("events", "--type", "run.started",
                                           cwd=two_conditions).stdout.splitlines()]
    assert [e["conditions"] for e in events][1] == {
        next(iter(events[1]["conditions"])): {"max_turns": "4"}}


# ---- 4. comparisons that hold up ---------------------------------------------------------------


def test_compare_pairs_tests_and_its_mcnemar_p_matches_one_by_hand(two_conditions):
    from math import comb

    a, b = (r["run_id"] for r in json.loads(ultra("runs", "--json", cwd=two_conditions).stdout))
    done = [json.loads(x) for x in ultra("events", "--type", "test.completed",
                                         cwd=two_conditions).stdout.splitlines()]

    def key(e: dict) -> tuple:
        return (e["model"], e["prompt_type"], e["tool_success_rate"], e["difficulty"],
                e["task_type"], e["task_id"])

    ok = {r: {key(e): e["result"]["outcome"] != "failure" for e in done if e["run_id"] == r}
          for r in (a, b)}
    doc = json.loads(ultra("report", "--compare", a, b, "--format", "json",
                           cwd=two_conditions).stdout)
    [t] = doc["tables"]
    assert "paired" in t["title"]
    for row in t["rows"]:
        keys = [k for k in ok[a] if k[0] == row["model"] and k in ok[b]]
        only_a = sum(ok[a][k] and not ok[b][k] for k in keys)
        only_b = sum(ok[b][k] and not ok[a][k] for k in keys)
        n = only_a + only_b
        p = min(1.0, 2 * sum(comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n) if n else 1.0
        assert row["paired"] == len(keys) == 30
        assert (row["only_a"], row["only_b"]) == (only_a, only_b)
        assert row["p_value"] == pytest.approx(p, rel=1e-12)
        assert row["delta"] == pytest.approx((only_b - only_a) / 30)
        lo, hi = row["delta_ci"]
        assert lo <= row["delta"] <= hi
        assert "n < 30" not in row["flags"] and "interrupted" not in row["flags"]
    by_difficulty = json.loads(ultra("report", "difficulty", "--compare", a, b, "--format",
                                     "json", cwd=two_conditions).stdout)["tables"][0]
    assert "difficulty" in [c["key"] for c in by_difficulty["columns"]]
    assert sum(r["paired"] for r in by_difficulty["rows"]) == 120


def test_compare_on_disjoint_runs_exits_2_unless_unpaired(tmp_path):
    db = log_with(tmp_path / "events.db", [
        *completions("a", "m", 10, run="run-a"),
        *completions("b", "m", 10, run="run-b", start=20, task_type="data_pipeline")])
    out = tmp_path / "master_database.json"
    p = ultra("report", "--compare", "run-a", "run-b", "--db", str(db), "--out", str(out),
              check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "runs run-a and run-b share no tests" in p.stderr
    doc, _ = json_report(db, out, "--compare", "run-a", "run-b", "--unpaired")
    assert "unpaired" in doc["tables"][0]["title"]
    # a few paired tests: n < 30 is flagged next to the numbers
    db2 = log_with(tmp_path / "two.db", [*completions("a", "m", 10, run="run-a"),
                                         *completions("a2", "m", 10, run="run-b", start=20)])
    doc, _ = json_report(db2, tmp_path / "two" / "m.json", "--compare", "run-a", "run-b")
    [row] = doc["tables"][0]["rows"]
    assert row["paired"] == 10 and "n < 30" in row["flags"]
    assert "no end recorded" not in row["flags"]  # no run events at all: nothing to say


# ---- 7. paper-ready output ---------------------------------------------------------------------

LATEX_NAME = "a&b%c$d#e_f{g}h~i^j\\k<l>"


def latex_structure(text: str) -> list[list[str]]:
    """Checks LaTeX as a compiler would see its structure (environments balanced, braces
    balanced on every line, no special character left bare, rows as wide as the column
    spec) and gives each tabular's lines between \\toprule and \\bottomrule."""
    import re

    stack: list[str] = []
    tabulars: list[list[str]] = []
    width = 0
    for line in text.splitlines():
        if line.startswith("%") or not line:
            continue
        bare = re.sub(r"\\[\\&%$#_{}]|\\[A-Za-z]+", "", line.replace("\\\\", ""))
        assert not re.search(r"[&%$#_~^]", bare.replace("&", "") if line.endswith("\\\\")
                             else bare), line  # only a row's column separators
        depth = 0
        for ch in re.sub(r"\\[{}]", "", line):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0, line
        assert depth == 0, line
        for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", line):
            if kind == "begin":
                stack.append(env)
            else:
                assert stack and stack.pop() == env, line
        if m := re.match(r"\\begin\{tabular\}\{([lr]+)\}$", line):
            width = len(m.group(1))
            tabulars.append([])
        elif stack and stack[-1] == "tabular":
            tabulars[-1].append(line)
            if line.endswith("\\\\"):
                assert len(re.findall(r"(?<!\\)&", line)) == width - 1, line
    assert stack == []
    return tabulars


def test_latex_output_is_booktabs_tables_that_compile_in_structure(tmp_path, demo_run):
    events: list[ev.Event] = []
    for i, name in enumerate([*NASTY, LATEX_NAME]):
        events += completions(f"n{i}-", name, 3, start=10 * i + 1)
    db, out = log_with(tmp_path / "events.db", events), tmp_path / "master_database.json"
    doc, _ = json_report(db, out, "all")
    text = ultra("report", "all", "--db", str(db), "--out", str(out), "--format", "latex").stdout
    tabulars = latex_structure(text)
    assert len(tabulars) == text.count("\\begin{table}") == len(doc["tables"])
    for lines, t in zip(tabulars, doc["tables"]):
        assert lines[0] == "\\toprule" and lines[2] == "\\midrule" and lines[-1] == "\\bottomrule"
        assert len(lines) == 4 + len(t["rows"]), t["name"]
    assert ("a\\&b\\%c\\$d\\#e\\_f\\{g\\}h\\textasciitilde{}i\\textasciicircum{}"
            "j\\textbackslash{}k\\textless{}l\\textgreater{}") in text
    assert "a\\textbar{}b*c\\_d" in text and "\\textless{}script\\textgreater{}" in text
    # every rate carries its interval as [lo, hi]; provenance as comments
    demo = ultra("report", "--format", "latex", cwd=demo_run).stdout
    latex_structure(demo)
    [good] = [ln for ln in demo.splitlines() if ln.startswith("sim-good &")]
    row = json.loads(ultra("report", "--format", "json", cwd=demo_run).stdout)["tables"][0]
    lo, hi = next(r for r in row["rows"] if r["model"] == "sim-good")["success_ci"]
    assert f"{{[{100 * lo:.1f}, {100 * hi:.1f}]}}" in good
    assert "% Made from" in demo and "SIMULATED" in demo
    assert all(ln.startswith("%   ") for ln in demo.split("% Made from\n")[1].splitlines() if ln)
    bad = ultra("report", "--format", "tex", cwd=demo_run, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "latex" in bad.stderr


def test_csv_gives_one_table_per_call_or_a_directory_of_files_with_all(demo_run, tmp_path):
    import csv
    import io

    one = ultra("report", "difficulty", "--format", "csv", cwd=demo_run).stdout
    table, provenance = one.split("\n\n# provenance\n")
    assert "#" not in table  # one plain table, then what it was made from
    [header, *rows] = list(csv.reader(io.StringIO(table)))
    assert header[:2] == ["model", "tests"] and len(rows) == 4
    bad = ultra("report", "all", "--format", "csv", cwd=demo_run, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--output DIR" in bad.stderr
    out = tmp_path / "tables"
    p = ultra("report", "all", "--format", "csv", "--output", str(out), cwd=demo_run)
    doc = json.loads(ultra("report", "all", "--format", "json", cwd=demo_run).stdout)
    names = sorted(f"{t['name']}.csv" for t in doc["tables"])
    assert sorted(f.name for f in out.iterdir()) == sorted([*names, "provenance.csv"])
    assert p.stdout.count("wrote ") == len(names) + 1
    for t in doc["tables"]:
        text = (out / f"{t['name']}.csv").read_text()
        assert "#" not in text and text == ultra(
            "report", t["name"], "--format", "csv", cwd=demo_run).stdout.split("\n\n# provenance")[0] + "\n"
        [head, *body] = list(csv.reader(io.StringIO(text)))
        assert head[0] in ("model", "family") and len(body) == len(t["rows"])
    facts = dict(csv.reader(io.StringIO((out / "provenance.csv").read_text())))
    assert facts["chain_head"] == doc["provenance"]["chain_head"]
    # a directory given for one table gets its file; a file given for several is refused
    one_dir = tmp_path / "one"
    one_dir.mkdir()
    ultra("report", "errors", "--format", "csv", "--output", str(one_dir), cwd=demo_run)
    assert (one_dir / "errors.csv").is_file()
    bad = ultra("report", "all", "--format", "csv", "--output", str(one_dir / "errors.csv"),
                cwd=demo_run, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a directory" in bad.stderr


def test_csv_of_two_conditions_is_a_file_for_each(two_conditions, tmp_path):
    bad = ultra("report", "--format", "csv", cwd=two_conditions, check=False)
    assert bad.returncode == 2 and "--condition" in bad.stderr
    ultra("report", "--format", "csv", "--output", str(tmp_path), cwd=two_conditions)
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "overview-default.csv", "overview-max_turns=4.csv", "provenance.csv"]


LONG_NAMES = ["qwen2.5-72b-instruct-on-the-eastus2-deployment-key1",
              "DeepSeek-V3-0324-served-by-the-gateway-key2", "gpt-4o-mini"]


def header_words(text: str, titles: set[str]) -> list[str]:
    """The words of every header line (the lines above each table's rule)."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith("─"):
            j = i - 1  # up to the blank line, the title or the simulated mark above
            while j >= 0 and lines[j] and lines[j] not in titles and lines[j] != "model" \
                    and not lines[j].startswith("SIMULATED"):
                out += lines[j].split()
                j -= 1
    return out


@pytest.mark.parametrize("columns", [200, 80])
def test_terminal_tables_use_the_width_keep_whole_names_and_whole_header_words(tmp_path, columns):
    events: list[ev.Event] = []
    for i, name in enumerate(LONG_NAMES):
        events += completions(f"l{i}-", name, 40, start=50 * i + 1, ok=30 - i)
    db, out = log_with(tmp_path / "events.db", events), tmp_path / "master_database.json"
    text = ultra("report", "all", "--db", str(db), "--out", str(out), columns=columns).stdout
    doc, _ = json_report(db, out, "all")
    assert max(len(line) for line in text.splitlines()) <= columns
    for name in LONG_NAMES:  # whole, at the start of a row, in every table
        assert sum(ln.startswith(name + " ") for ln in text.splitlines()) >= len(doc["tables"])
    assert "…" not in text
    words = {w for t in doc["tables"] for c in t["columns"] for w in c["title"].split()}
    heads = header_words(text, {t["title"] for t in doc["tables"]})
    assert heads and set(heads) <= words, set(heads) - words
    rules = [ln for ln in text.splitlines() if ln.startswith("─")]
    if columns == 200:  # each table in one block, as wide as it needs
        assert len(rules) == len(doc["tables"]) and max(map(len, rules)) > 80
    else:  # a wide table continues below, its names repeated
        assert len(rules) > len(doc["tables"])


def test_the_page_draws_no_line_chart_over_a_single_tool_success_rate(demo_run):
    from ultra.report.page import charts
    from ultra.report.tables import Column, Table

    page = ultra("report", "--format", "html", cwd=demo_run).stdout  # the demo: rate 0.8 only
    assert 'id="chart-success-by-model"' in page and 'id="chart-error-categories"' in page
    assert "chart-success-over-tool-reliability" not in page and '"mode":"lines' not in page
    cols = [Column("model", "model", "text"), Column("tests", "tests", "count")]
    one = Table("tool-reliability", "t", [*cols, Column("0.8", "0.8 %", "rate")], [["m", 3, 0.5]])
    two = Table("tool-reliability", "t", [*cols, Column("0.8", "0.8 %", "rate"),
                                          Column("1.0", "1.0 %", "rate")], [["m", 3, 0.5, 0.7]])
    assert [n for n, _ in charts({"tool-reliability": one})] == []
    [(name, fig)] = charts({"tool-reliability": two})
    assert name == "success-over-tool-reliability" and fig.data[0].mode == "lines+markers"
