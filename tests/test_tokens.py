"""Every token counted: what the server reported in its replies' `usage` is what the log
records, what master_database.json calls `tokens_spent` and what `ultra run` prints, for
errored, interrupted and preflight requests too; answers cut off at the token limit are
counted as truncated. Real `ultra` processes against a real simulator process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.collection_helpers import ROOT, events, model, ultra
from tests.test_routes import KEYS, real_providers, run, write
from ultra.sim.config import Faults, Latency, SimConfig
from ultra.sim.process import SimProcess


def _served(stats: dict) -> dict[str, int]:
    """What the replies' usage said, summed: prompt and completion tokens."""
    t = stats["total"]
    return {"prompt_tokens": t["usage_prompt_tokens"], "completion_tokens": t["usage_completion_tokens"]}


def _spent(master: dict, name: str = "sim-good") -> dict[str, int]:
    spent = master["models"][name]["tokens_spent"]
    return {k: spent[k] for k in ("prompt_tokens", "completion_tokens")}


def _printed(result: dict, name: str = "sim-good") -> dict[str, int]:
    (t,) = [t for t in result["tokens"] if t["model"] == name]
    return {k: t[k] for k in ("prompt_tokens", "completion_tokens")}


def test_errored_tests_carry_the_tokens_their_answers_cost(tmp_path):
    sim_cfg = SimConfig(latency=Latency(median_ms=2), faults=Faults(server_error=0.3), seed=3)
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=12, models=model(
            "sim-good", "gw", "single", workers=2, qps=100, max_retries=0)))
        proc = run(config, tmp_path, "--no-preflight", "--json", "--max-errors", "100%")
        stats = sim.stats()
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    errored = events(tmp_path / "events.db", "--type", "test.errored")
    paid = [e for e in errored if e["usage"]["prompt_tokens"] > 0]
    assert paid, "some test must have failed after answers that cost tokens"
    master = json.loads((tmp_path / "master.json").read_text())
    served = _served(stats)
    assert served["prompt_tokens"] > 0
    assert _spent(master) == served == _printed(result)
    counted = master["models"]["sim-good"]["overall_stats"]["prompt_tokens"]
    assert counted + sum(e["usage"]["prompt_tokens"] for e in errored) == served["prompt_tokens"]
    assert master["summary"]["tokens_spent"]["prompt_tokens"] == served["prompt_tokens"]


def _all_hung(sim: SimProcess, workers: int, timeout: float = 90) -> None:
    """Until every worker waits on a request the server will never answer: `workers` in
    flight, and nothing served for a second (the other requests take milliseconds)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        t = sim.stats()["total"]
        now = (t["in_flight"], t["requests"], t["usage_prompt_tokens"])
        if t["in_flight"] == workers and now == last:
            return
        last = now
        time.sleep(1.0)
    raise AssertionError("the workers never all hung")


def test_an_interrupted_run_records_the_tokens_of_the_tests_it_cancels(tmp_path):
    """Ctrl-C while every worker waits on a hung request: each cancelled test whose earlier
    turns cost tokens is recorded (test.errored, cancelled) with that usage, so the log
    accounts for every token the server reported."""
    workers = 6
    sim_cfg = SimConfig(latency=Latency(median_ms=2), faults=Faults(hang=0.3), seed=5)
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=24, models=model(
            "sim-good", "gw", "single", workers=workers, qps=100, request_timeout=600,
            test_timeout=900)))
        db, out = tmp_path / "events.db", tmp_path / "master.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "ultra", "run", "--config", str(config), "--db", str(db),
             "--out", str(out), "--no-preflight", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, **KEYS, "PYTHONPATH": str(ROOT)}, start_new_session=True)
        try:
            _all_hung(sim, workers)
            os.killpg(proc.pid, signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        stats = sim.stats()
    assert proc.returncode == 130, stderr
    cancelled = [e for e in events(db, "--type", "test.errored") if e["reason"] == "cancelled"]
    # a hung test had answers before its hang unless it hung on its first request (about
    # one in three): all six doing so is about a 1-in-1000 chance
    assert cancelled and all(e["usage"]["prompt_tokens"] > 0 for e in cancelled)
    master = json.loads(out.read_text())
    assert _spent(master) == _served(stats) == _printed(json.loads(stdout))


def test_preflight_tokens_are_recorded_and_counted(tmp_path):
    with SimProcess(SimConfig()) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=2, models=model(
            "sim-good", "gw", "per-key", workers=2, qps=100)))
        proc = run(config, tmp_path, "--json")
        stats = sim.stats()
    assert proc.returncode == 0, proc.stderr[-2000:]
    checks = events(tmp_path / "events.db", "--type", "route.checked")
    assert len(checks) == 2  # two tests on three keys: two shards have tests
    assert all(c["ok"] and c["usage"]["prompt_tokens"] > 0 and c["simulated"] for c in checks)
    master = json.loads((tmp_path / "master.json").read_text())
    assert _spent(master) == _served(stats) == _printed(json.loads(proc.stdout))
    node = master["models"]["sim-good"]
    assert node["tokens_spent"]["prompt_tokens"] - node["overall_stats"]["prompt_tokens"] == \
        sum(c["usage"]["prompt_tokens"] for c in checks)


def test_answers_cut_off_at_max_tokens_are_counted_as_truncated(tmp_path):
    with SimProcess(SimConfig()) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=3, models=model(
            "sim-good", "gw", "single", workers=2, qps=100, max_tokens=3)))
        proc = run(config, tmp_path, "--json", "--no-preflight")
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = events(tmp_path / "events.db", "--type", "test.completed")
    assert len(done) == 3 and all("length" in e["result"]["finish_reasons"] for e in done)
    master = json.loads((tmp_path / "master.json").read_text())
    stats = master["models"]["sim-good"]["overall_stats"]
    assert stats["tests_truncated"] == stats["total"] == 3 and stats["truncation_rate"] == 1.0
    assert master["summary"]["tests_truncated"] == 3
    report = ultra("report", "--db", str(tmp_path / "events.db"), "--out",
                   str(tmp_path / "master.json"), "--format", "json")
    assert report.returncode == 0, report.stderr
    (overview,) = [t for t in json.loads(report.stdout)["tables"] if t["name"] == "overview"]
    assert [row["truncated"] for row in overview["rows"]] == [3]


def test_cost_in_master_database_where_prices_are_known_agrees_with_the_run(tmp_path):
    with SimProcess(SimConfig()) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=3, models=(
            model("sim-good", "gw", "per-key", workers=2, qps=100, input_price=0.15,
                  output_price=0.6)
            + model("sim-weak", "gw", "single", workers=2, qps=100))))
        proc = run(config, tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = {t["model"]: t["cost"] for t in json.loads(proc.stdout)["tokens"]}
    master = json.loads((tmp_path / "master.json").read_text())
    good, weak = master["models"]["sim-good"], master["models"]["sim-weak"]
    assert abs(good["tokens_spent"]["cost"] - printed["sim-good"]) < 1e-6  # preflight included
    assert printed["sim-weak"] is None and "cost" not in weak["tokens_spent"]
    stats = good["overall_stats"]
    assert stats["priced_tests"] == stats["total"] == 3
    assert abs(stats["cost"] - (stats["prompt_tokens"] * 0.15 + stats["completion_tokens"] * 0.6) / 1e6) < 1e-6
    leaves = [leaf for p in good["by_prompt_type"].values()
              for r in p["by_tool_success_rate"].values() for d in r["by_difficulty"].values()
              for leaf in d["by_task_type"].values()]
    assert abs(sum(leaf["cost"] for leaf in leaves) - stats["cost"]) < 1e-6  # at every level
    assert "cost" not in weak["overall_stats"]  # no price, no cost
    assert master["summary"]["priced_tests"] == 3
