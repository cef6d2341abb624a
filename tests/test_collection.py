"""`ultra run` end to end over real loopback HTTP: routing, limits, 429 storms, faults,
crashes, interrupts and secrets. Every run is a real `ultra` process against a real
simulator process; what we check comes from the simulator's /stats and the event log."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.collection_helpers import (
    events,
    model,
    outcome_counts,
    popen_ultra,
    sim_models_config,
    ultra,
)
from ultra.sim.config import Faults, Latency, SimConfig, Storm
from ultra.sim.process import SimProcess
from ultra.sim.server import key_fingerprint


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ultra.toml"
    path.write_text(text)
    return path


def run_json(config: Path, tmp_path: Path, *extra: str, env=None, expect=0) -> dict:
    proc = ultra("run", "--config", str(config), "--db", str(tmp_path / "events.db"),
                 "--out", str(tmp_path / "master.json"), "--json", *extra, env=env)
    assert proc.returncode == expect, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def every_test_once(db: Path) -> tuple[int, int]:
    """Each planned test of each run ends in exactly one completed or errored event."""
    evs = events(db)
    counts = outcome_counts(evs)
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n != 1][:5]
    planned = sum(e["plan"]["tests"] for e in evs if e["type"] == "run.started")
    finished = sum(counts.values())
    return planned, finished


def test_routing_and_limits(tmp_path):
    sim_cfg = SimConfig(latency=Latency(distribution="uniform", median_ms=20, spread_ms=10))
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, sim_models_config(sim.url, instances=4, models=(
            model("sim-good", "gw", "per-key", workers=3, qps=15)
            + model("sim-strong", "az", "per-deployment", workers=4, qps=20))))
        result = run_json(config, tmp_path, "--processes", "2")
        stats = sim.stats()
    assert result["errored"] == 0 and result["completed"] == result["planned"] == 80
    shards = {s["shard"]: s for s in result["shards"]}
    assert len(shards) == 6
    for i in range(3):
        route = stats["keys"][key_fingerprint(f"sim-key-{i}")]
        shard = shards[f"sim-good@sim-good-key{i}"]
        # this key carried exactly its shard, plus the one preflight request
        assert route["requests"] == shard["requests"] + 1 > 1
        assert route["max_in_flight"] <= 3
        assert 0.9 * 15 <= route["max_per_second"] <= 15 + 1
    for dep in ("sim-strong", "sim-strong-2", "sim-strong-3"):
        route = stats["deployments"][dep]
        assert route["requests"] == shards[f"sim-strong@{dep}"]["requests"] + 1 > 1
        assert route["max_in_flight"] <= 4
        assert 0.9 * 20 <= route["max_per_second"] <= 20 + 1
    planned, finished = every_test_once(tmp_path / "events.db")
    assert planned == finished == 80
    master = json.loads((tmp_path / "master.json").read_text())
    assert set(master["models"]) == {"sim-good", "sim-strong"}  # instances fold into models


def test_429_storm_slows_down_recovers_and_loses_nothing(tmp_path):
    sim_cfg = SimConfig(latency=Latency(median_ms=5), storm=Storm(duration_s=2.0, fraction=1.0,
                                                                   from_first_request=True))
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, sim_models_config(sim.url, instances=5, models=model(
            "sim-good", "gw", "single", workers=4, qps=20)))
        # no preflight: its one request would sit out the storm before the shard starts
        result = run_json(config, tmp_path, "--processes", "1", "--no-preflight")
        stats = sim.stats()
    assert result["errored"] == 0 and result["completed"] == result["planned"] == 50
    shard = result["shards"][0]
    assert shard["throttled"] > 0
    assert stats["total"]["rate_limited"] == shard["throttled"]
    assert shard["min_rate"] <= 20 / 2  # the pacer backed off ...
    assert shard["rate"] == 20  # ... and climbed back to the limit once the storm was over
    every_test_once(tmp_path / "events.db")


def test_thirty_percent_faults_every_test_ends_once(tmp_path):
    faults = Faults(server_error=0.10, malformed=0.05, empty_content=0.04, empty_choices=0.03,
                    hang=0.05, context_length=0.03)
    sim_cfg = SimConfig(latency=Latency(median_ms=2), faults=faults, seed=7)
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, sim_models_config(sim.url, instances=3, models=model(
            "sim-strong", "az", "per-deployment", workers=6, qps=200,
            # a hang costs its request 3 s: long enough that a loaded CI machine's slow
            # answers are not taken for a dead route (timeouts count toward broken_after)
            request_timeout=3, test_timeout=60, max_retries=2)))
        # no preflight: at 30 % faults its one request may fail three times in a row, which
        # rightly stops a run before it starts; the subject here is faults during tests
        result = run_json(config, tmp_path, "--processes", "2", "--max-errors", "100%",
                          "--no-preflight")
        stats = sim.stats()
    assert stats["total"]["faults"] > 0
    planned, finished = every_test_once(tmp_path / "events.db")
    assert planned == finished == result["planned"] == 30
    assert result["completed"] + result["errored"] == 30
    # the log stays auditable
    audit = ultra("audit", "--db", str(tmp_path / "events.db"), "--out", str(tmp_path / "master.json"))
    assert audit.returncode == 0, audit.stdout + audit.stderr


def _shard_worker_pids(parent: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                pids.append(int(child))
    return pids


def _wait_for_completed(db: Path, at_least: int, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            done = [e for e in events(db, "--type", "test.completed")]
            if len(done) >= at_least:
                return
        time.sleep(0.3)
    raise AssertionError("run produced no results in time")


SLOW_MODELS = (model("sim-good", "gw", "per-key", workers=2, qps=10)
               + model("sim-medium", "az", "single", workers=2, qps=10, deployments=["sim-medium"]))


def test_shard_process_killed_then_resumed_completes_each_test_once(tmp_path):
    with SimProcess(SimConfig(latency=Latency(median_ms=40))) as sim:
        config = write(tmp_path, sim_models_config(sim.url, instances=3, models=SLOW_MODELS))
        db = tmp_path / "events.db"
        proc = popen_ultra("run", "--config", str(config), "--db", str(db), "--out",
                           str(tmp_path / "m.json"), "--processes", "2", "--json")
        _wait_for_completed(db, 3, proc)
        victims = _shard_worker_pids(proc.pid)
        assert victims
        os.kill(victims[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 1, err  # a crashed shard process is reported, not hidden
        first = json.loads(out)
        assert first["crashed_processes"] == 1
        assert first["completed"] + first["errored"] < first["planned"]
        second = run_json(config, tmp_path, "--processes", "2")
    assert second["skipped_completed"] > 0
    evs = events(db)
    completed = Counter(e["test_key"] for e in evs if e["type"] == "test.completed")
    total = next(e for e in evs if e["type"] == "run.started")["plan"]["tests"]
    assert len(completed) == total == 60
    assert set(completed.values()) == {1}


@pytest.mark.parametrize("how", ["sigterm-to-parent", "ctrl-c-to-group"])
def test_interrupt_commits_and_finishes_every_shard(tmp_path, how):
    with SimProcess(SimConfig(latency=Latency(median_ms=40))) as sim:
        config = write(tmp_path, sim_models_config(sim.url, instances=3, models=SLOW_MODELS))
        db = tmp_path / "events.db"
        proc = popen_ultra("run", "--config", str(config), "--db", str(db), "--out",
                           str(tmp_path / "m.json"), "--processes", "2")
        _wait_for_completed(db, 2, proc)
        if how == "sigterm-to-parent":
            proc.send_signal(signal.SIGTERM)
        else:  # what a terminal does on Ctrl-C: SIGINT to every process of the group
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    evs = events(db)
    finished = [e for e in evs if e["type"] == "shard.finished"]
    started = [e for e in evs if e["type"] == "shard.started"]
    assert len(finished) == len(started) == 4
    assert any(e["interrupted"] for e in finished)
    assert [e["interrupted"] for e in evs if e["type"] == "run.finished"] == [True]
    counts = outcome_counts(evs)
    assert counts and set(counts.values()) == {1}
    assert (tmp_path / "m.json").exists()  # the run still ends by projecting


def test_secrets_never_leave_the_environment(tmp_path):
    secrets = {f"ULTRA_T_KEY{i}": f"sk-test-{uuid.uuid4().hex}" for i in range(2)}
    secrets["ULTRA_T_AZURE"] = f"az-{uuid.uuid4().hex}"
    with SimProcess(SimConfig(latency=Latency(median_ms=2))) as sim:
        config = write(tmp_path, f"""
[run]
prompt_types = ["baseline"]
num_instances = 2

[providers.gw]
kind = "openai"
base_url = "{sim.url}/v1"
api_key_envs = ["ULTRA_T_KEY0", "ULTRA_T_KEY1"]

[providers.az]
kind = "azure"
endpoint = "{sim.url}"
api_key_env = "ULTRA_T_AZURE"

[models.sim-good]
provider = "gw"
class = "open-multikey"

[models.sim-strong]
provider = "az"
class = "open-azure"
workers = 4
qps = 50
""")
        missing = ultra("run", "--config", str(config), "--db", str(tmp_path / "x.db"))
        assert missing.returncode == 2
        assert "ULTRA_T_KEY0 is not set" in missing.stderr and "Traceback" not in missing.stderr
        assert not (tmp_path / "x.db").exists()  # refused before anything was created
        proc = ultra("run", "--config", str(config), "--db", str(tmp_path / "events.db"),
                     "--out", str(tmp_path / "master.json"), env=secrets)
        shown = ultra("config", "show", "--config", str(config), env=secrets)
        dumped = ultra("events", "--db", str(tmp_path / "events.db"))
        stats = sim.stats()
    assert proc.returncode == 0, proc.stderr
    for i in range(2):  # each key shard really used its own key
        assert stats["keys"][key_fingerprint(secrets[f"ULTRA_T_KEY{i}"])]["requests"] > 0
    assert stats["keys"][key_fingerprint(secrets["ULTRA_T_AZURE"])]["requests"] > 0
    haystacks = [proc.stdout, proc.stderr, shown.stdout, dumped.stdout, json.dumps(stats)]
    haystacks += [p.read_bytes().decode("latin-1") for p in tmp_path.iterdir() if p.is_file()]
    for secret in secrets.values():
        assert not any(secret in h for h in haystacks)
    assert "<set>" in shown.stdout


def test_embedded_demo_runs_from_nothing(tmp_path):
    proc = ultra("run", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["completed"] + result["errored"] == result["planned"] > 0
    master = json.loads((tmp_path / "ultra-data" / "master_database.json").read_text())
    assert set(master["models"]) == {"sim-good", "sim-strong", "sim-medium", "sim-weak"}
    strategies = {e["strategy"] for e in events(tmp_path / "ultra-data" / "events.db", "--type", "shard.started")}
    assert strategies == {"per-key", "per-deployment", "single"}
    assert all(e["simulated"] for e in events(tmp_path / "ultra-data" / "events.db", "--type", "test.completed"))
    again = ultra("plan", "--json", cwd=tmp_path)
    assert again.returncode == 0
    assert json.loads(again.stdout)["skipped_completed"] == result["completed"]


@pytest.mark.parametrize("args, message", [
    (["--models", "nope"], "unknown model 'nope'"),
    (["--tool-success-rate", "1.5"], "invalid tool success rate 1.5"),
    (["--tool-success-rate", "abc"], "invalid tool success rate 'abc'"),
    (["--prompt-types", "weird"], "unknown prompt type 'weird'"),
    (["--num-instances", "0"], "invalid --num-instances 0"),
    (["--processes", "0"], "invalid --processes 0"),
    (["--config", "/nonexistent.toml"], "cannot read config"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    proc = ultra("run", "--db", str(tmp_path / "e.db"), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "e.db").exists()  # nothing ran, nothing was written


def test_a_second_suite_runs_through_the_same_collection(tmp_path):
    """A team's own suite (tests/tiny_suite.py) planned, run, stored and projected by ultra."""
    with SimProcess(SimConfig(responder="tests.tiny_suite:sim_responder")) as sim:
        config = write(tmp_path, sim_models_config(sim.url, instances=5, models=model(
            "sim-strong", "gw", "per-key", workers=2, qps=100)))
        result = run_json(config, tmp_path, "--suite", "tests.tiny_suite:SUITE",
                          "--prompt-types", "plain", "--difficulty", "easy,hard",
                          "--task-types", "addition")
    assert result["completed"] == result["planned"] == 10 and result["errored"] == 0
    evs = events(tmp_path / "events.db", "--type", "test.completed")
    assert {e["suite"] for e in evs} == {"arith"}
    per_key = Counter(e["instance"] for e in evs)  # spread evenly over the three key shards
    assert sorted(per_key.items()) == [("sim-strong-key0", 4), ("sim-strong-key1", 3), ("sim-strong-key2", 3)]
    master = json.loads((tmp_path / "master.json").read_text())
    stats = master["models"]["sim-strong"]["by_prompt_type"]["plain"]["overall_stats"]
    assert stats["total"] == 10 and stats["full_success"] >= 7  # skill 0.9
    # its own metrics, as it declares them (two means, one sum): avg_<name> / total_<name>
    # in master_database.json, columns of results.db (and its views), a table of `ultra report`
    started = events(tmp_path / "events.db", "--type", "run.started")[0]
    assert started["suite"] == "arith" and [(m["name"], m["aggregate"]) for m in started["metrics"]] \
        == [("accuracy", "mean"), ("answer_chars", "mean"), ("off_by_one", "sum")]
    accuracy = stats["full_success"] / 10
    off_by_one = 10 - stats["full_success"]  # the simulator's wrong answers are one too many
    assert stats["avg_accuracy"] == pytest.approx(accuracy)
    assert stats["avg_answer_chars"] > 1
    assert stats["total_off_by_one"] == off_by_one and "avg_off_by_one" not in stats
    leaf = master["models"]["sim-strong"]["by_prompt_type"]["plain"]["by_tool_success_rate"]
    by_difficulty = next(iter(leaf.values()))["by_difficulty"]
    assert sum(d["overall_stats"]["total_off_by_one"] for d in by_difficulty.values()) == off_by_one
    results = tmp_path / "results.db"
    with sqlite3.connect(results) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(tests)")]
        assert cols[-3:] == ["accuracy", "answer_chars", "off_by_one"]
        assert conn.execute("SELECT SUM(accuracy), COUNT(answer_chars), SUM(off_by_one) FROM tests"
                            ).fetchone() == (stats["full_success"], 10, off_by_one)
        assert conn.execute("SELECT name, aggregate FROM metrics ORDER BY position").fetchall() \
            == [("accuracy", "mean"), ("answer_chars", "mean"), ("off_by_one", "sum")]
        view = conn.execute("SELECT avg_accuracy, avg_answer_chars, total_off_by_one FROM by_model"
                            ).fetchone()
        assert view == pytest.approx((accuracy, stats["avg_answer_chars"], off_by_one))
    report = ultra("report", "metrics", "--db", str(tmp_path / "events.db"), "--out",
                   str(tmp_path / "master.json"), "--format", "json")
    assert report.returncode == 0, report.stderr
    table = json.loads(report.stdout)["tables"][0]
    keys = [c["key"] for c in table["columns"]]
    assert keys == ["model", "suite", "tests", "success_rate", "success_ci", "avg_accuracy",
                    "avg_answer_chars", "total_off_by_one"]
    (row,) = table["rows"]
    assert row.pop("success_rate") > 0 and len(row.pop("success_ci")) == 2
    assert table["rows"] == [{"model": "sim-strong", "suite": "arith", "tests": 10,
                              "avg_accuracy": pytest.approx(accuracy),
                              "avg_answer_chars": pytest.approx(stats["avg_answer_chars"]),
                              "total_off_by_one": off_by_one}]


def test_malformed_config_and_foreign_db_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[models.x\nprovider = 1\n")
    proc = ultra("run", "--config", str(bad), "--db", str(tmp_path / "e.db"))
    assert proc.returncode == 2 and proc.stderr.startswith("ultra: error: malformed config")
    assert len(proc.stderr.strip().splitlines()) == 1
    invalid = tmp_path / "invalid.toml"
    invalid.write_text('[models.m]\nprovider = "p"\nqps = -1\nstrategy = "sideways"\n'
                       '[providers.p]\nkind = "openai"\nbase_url = "http://127.0.0.1:9"\n'
                       'api_key_envs = ["K"]\n')
    proc = ultra("config", "show", "--config", str(invalid))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [  # the first problem, where it is
        f"ultra: error: invalid config {invalid}: model 'm': Expected `float` > 0.0 - at `qps`",
    ]
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"this is not sqlite at all" * 10)
    proc = ultra("run", "--db", str(foreign))
    assert proc.returncode == 2 and "not an SQLite database" in proc.stderr
    assert foreign.read_bytes() == b"this is not sqlite at all" * 10  # untouched


def test_a_team_task_library_is_planned_and_run(tmp_path):
    good = {"id": "t1", "task_type": "simple_task", "descriptions": {"easy": "Read data/a.csv and parse it."},
            "inputs": {"path": "data/a.csv"}, "required_tools": ["read_file", "parse_csv"]}
    tasks = tmp_path / "team.json"
    tasks.write_text(json.dumps({"tasks": [good, {**good, "id": "t2", "task_type": "own_type"}]}))
    with SimProcess(SimConfig()) as sim:
        config = write(tmp_path, sim_models_config(sim.url, models=model(
            "sim-strong", "az", "single", deployments=["sim-strong"])))
        planned = ultra("plan", "--config", str(config), "--tasks", str(tasks), "--json",
                        "--db", str(tmp_path / "events.db"))
        assert planned.returncode == 0, planned.stderr
        assert json.loads(planned.stdout)["planned"] == 2 * 2 * 2  # prompts x task types x instances
        result = run_json(config, tmp_path, "--tasks", str(tasks))
    assert result["completed"] + result["errored"] == 8
    evs = events(tmp_path / "events.db", "--type", "test.completed")
    assert {e["task_id"] for e in evs} == {"t1", "t2"}
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"tasks": [{**good, "required_tools": ["nope"]}]}))
    proc = ultra("run", "--config", str(config), "--tasks", str(broken), "--db", str(tmp_path / "x.db"))
    assert proc.returncode == 2 and "task 't1': field 'required_tools'" in proc.stderr


def test_models_on_one_key_share_the_key_budget(tmp_path):
    """A gateway that limits keys, not models: `key_qps` caps all models on a key together."""
    with SimProcess(SimConfig(latency=Latency(median_ms=10))) as sim:
        config = write(tmp_path, sim_models_config(sim.url, instances=3, key_qps=12, models=(
            model("sim-good", "gw", "per-key", workers=3, qps=10)
            + model("sim-medium", "gw", "per-key", workers=3, qps=10))))
        result = run_json(config, tmp_path, "--processes", "2")
        stats = sim.stats()
    assert result["completed"] + result["errored"] == result["planned"] == 60
    for i in range(3):
        route = stats["keys"][key_fingerprint(f"sim-key-{i}")]
        # two models at 10 qps each would send 20/s on this key; together they stay <= 12 + 1
        assert route["max_per_second"] <= 12 + 1
        # and the budget is used (a loaded CI machine may not reach 0.9 of it in any window)
        assert route["max_per_second"] >= 10, route