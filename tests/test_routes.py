"""Real providers over loopback HTTP: what real APIs accept, routes that fail fast, exit
codes that tell the truth, keys, tokens. Every run is a real `ultra` process against a
real simulator process reached as kind `openai` / `azure`, as a real provider would be."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.collection_helpers import ROOT, events, model, sim_models_config, ultra
from ultra.function_schema import function_problem
from ultra.sim.config import Faults, Latency, Limits, Routes, SimConfig
from ultra.sim.process import SimProcess
from ultra.sim.server import key_fingerprint

KEYS = {f"ULTRA_R_KEY{i}": f"sk-test-{uuid.uuid4().hex}" for i in range(3)}
KEYS["ULTRA_R_AZURE"] = uuid.uuid4().hex  # Azure keys are 32 hex characters


def real_providers(url: str, *, models: str, instances: int = 1, prompts: str = '["baseline"]') -> str:
    """Providers of kind openai (3 keys) and azure, pointing at the simulator."""
    return f"""
[run]
prompt_types = {prompts}
task_types = ["simple_task"]
num_instances = {instances}

[providers.gw]
kind = "openai"
base_url = "{url}/v1"
api_key_envs = ["ULTRA_R_KEY0", "ULTRA_R_KEY1", "ULTRA_R_KEY2"]

[providers.az]
kind = "azure"
endpoint = "{url}"
api_key_env = "ULTRA_R_AZURE"

{models}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ultra.toml"
    path.write_text(text)
    return path


def run(config: Path, tmp_path: Path, *extra: str, env: dict | None = None, timeout: float = 240):
    return ultra("run", "--config", str(config), "--db", str(tmp_path / "events.db"),
                 "--out", str(tmp_path / "master.json"), *extra, env={**KEYS, **(env or {})},
                 timeout=timeout)


def assert_no_secret(tmp_path: Path, *texts: str) -> None:
    haystacks = list(texts) + [p.read_bytes().decode("latin-1") for p in tmp_path.iterdir() if p.is_file()]
    for secret in KEYS.values():
        for h in haystacks:
            assert secret not in h and secret[-8:] not in h


def test_preset_request_bodies_as_the_simulator_receives_them(tmp_path):
    """Every preset model's request: its options, no temperature nor max_tokens for the
    reasoning models (the simulator refuses them as the OpenAI API does), valid tools."""
    presets = (ROOT / "ultra" / "configs" / "presets.toml").read_text()
    names = re.findall(r'^\[models\."([^"]+)"\]', presets, re.M)
    assert len(names) == 13
    sim_cfg = SimConfig(latency=Latency(median_ms=1), record_requests=10_000,
                        routes=Routes(models={n: 0.9 for n in names}))
    with SimProcess(sim_cfg) as sim:
        text = (presets.replace("https://gateway.example.invalid/v1", f"{sim.url}/v1")
                .replace("https://your-resource.openai.azure.invalid", sim.url))
        config = write(tmp_path, text)
        env = {"ULTRA_GATEWAY_KEY0": "gw-0", "ULTRA_GATEWAY_KEY1": "gw-1",
               "ULTRA_GATEWAY_KEY2": "gw-2", "ULTRA_AZURE_KEY": "az"}
        proc = run(config, tmp_path, "--json", "--prompt-types", "baseline",
                   "--task-types", "simple_task", "--num-instances", "1", env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        recorded = sim._request("GET", "/requests")
    bodies: dict[str, list[dict]] = {}
    for r in recorded:
        m = re.match(r"/openai/deployments/(.+)/chat/completions", r["path"])
        name = r["body"]["model"] if m is None else re.sub(r"-\d$", "", m.group(1))
        bodies.setdefault(name, []).append(r["body"])
    assert set(bodies) == set(names)
    for name, sent in bodies.items():
        turns = [b for b in sent if "tools" in b]  # the preflight request offers no tools
        assert turns, name
        for body in turns:
            if name in ("o3-0416-global", "gpt-5-mini"):
                assert body["max_completion_tokens"] == 8192, name
                assert "temperature" not in body and "max_tokens" not in body, name
            elif name == "DeepSeek-R1-0528":
                assert body["max_tokens"] == 8192 and "temperature" not in body
            else:
                assert body["max_tokens"] == 2048 and body["temperature"] == 0.0, name
            assert ("model" in body) == (name not in ("DeepSeek-V3-0324", "DeepSeek-R1-0528",
                                                      "Llama-3.3-70B-Instruct", "gpt-4o-mini", "gpt-5-mini"))
            for tool in body["tools"]:
                assert function_problem(tool["function"]["name"], tool["function"]["parameters"]) is None


def test_the_simulator_refuses_what_reasoning_models_refuse(tmp_path):
    sim_cfg = SimConfig(routes=Routes(models={"o3-0416-global": 0.9}))
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, real_providers(sim.url, models=model(
            "o3-0416-global", "gw", "single", temperature=0.2, max_tokens=100)))
        proc = run(config, tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "model 'o3-0416-global'" in line and "HTTP 400" in line
    assert "'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead." in line


def test_wrong_key_and_unknown_deployment_stop_the_run_before_any_test(tmp_path):
    good = [KEYS["ULTRA_R_KEY0"], KEYS["ULTRA_R_KEY2"], KEYS["ULTRA_R_AZURE"]]
    sim_cfg = SimConfig(routes=Routes(accept_keys=[key_fingerprint(k) for k in good]))
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=3, models=(
            model("sim-good", "gw", "per-key", workers=2, qps=20)
            + model("sim-strong", "az", "per-deployment", workers=2, qps=20,
                    deployments=["sim-strong", "no-such-deployment"]))))
        proc = run(config, tmp_path)
        stats = sim.stats()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, lines  # one line per broken route, nothing else
    key1 = next(x for x in lines if "key 1" in x)
    assert key1.startswith("ultra: error: route broken at preflight: provider 'gw', model 'sim-good', key 1: HTTP 401: ")
    assert "Incorrect API key provided: ***" in key1
    dep = next(x for x in lines if "no-such-deployment" in x)
    assert "provider 'az', model 'sim-strong', deployment 'no-such-deployment': HTTP 404: " \
        "The API deployment no-such-deployment does not exist." in dep
    assert stats["total"]["requests"] == 5  # one cheap request per route, then nothing
    assert "Traceback" not in proc.stderr
    assert not [e for e in events(tmp_path / "events.db") if e["type"].startswith(("test.", "run."))]
    assert_no_secret(tmp_path, proc.stdout, proc.stderr)


def test_a_route_that_starts_refusing_breaks_and_the_others_complete(tmp_path):
    sim_cfg = SimConfig(latency=Latency(median_ms=2),
                        routes=Routes(refuse_after={key_fingerprint(KEYS["ULTRA_R_KEY1"]): 6}))
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=10, prompts='["baseline", "optimal"]',
                                                models=model("sim-good", "gw", "per-key", workers=1, qps=50)))
        proc = run(config, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "route broken: provider 'gw', model 'sim-good', key 1: HTTP 401: Incorrect API key provided: ***" \
        in proc.stdout
    evs = events(tmp_path / "events.db")
    by_instance: dict[str, dict[str, int]] = {}
    for e in evs:
        if e["type"] in ("test.completed", "test.errored"):
            by_instance.setdefault(e["instance"], {}).setdefault(e["type"], 0)
            by_instance[e["instance"]][e["type"]] += 1
    planned = {e["shard_id"]: e["planned"] for e in evs if e["type"] == "shard.started"}
    assert by_instance["sim-good-key0"] == {"test.completed": planned["sim-good@sim-good-key0"]}
    assert by_instance["sim-good-key2"] == {"test.completed": planned["sim-good@sim-good-key2"]}
    assert by_instance["sim-good-key1"]["test.errored"] == 3  # stopped at the third refusal
    assert sum(by_instance["sim-good-key1"].values()) < planned["sim-good@sim-good-key1"]
    refused = [e for e in evs if e["type"] == "test.errored"]
    assert {e["http_status"] for e in refused} == {401}
    assert all(e["message"].startswith("Incorrect API key provided: ***") for e in refused)
    assert all(e["simulated"] for e in evs if e["type"].startswith("test."))  # the mark, kind openai
    assert_no_secret(tmp_path, proc.stdout, proc.stderr)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("preflight", [True, False])
def test_no_server_listening_is_a_clear_message_and_a_non_zero_exit(tmp_path, preflight):
    port = _closed_port()
    config = write(tmp_path, real_providers(f"http://127.0.0.1:{port}", instances=6, models=model(
        "sim-good", "gw", "single", workers=2, qps=20, test_timeout=10, max_retries=2)))
    t0 = time.monotonic()
    proc = run(config, tmp_path, *([] if preflight else ["--no-preflight"]))
    elapsed = time.monotonic() - t0
    assert "Traceback" not in proc.stderr
    assert elapsed < 60  # bounded by test_timeout and the retries, not by luck
    where = "provider 'gw', model 'sim-good', key "
    if preflight:
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert where in line and f"no answer: cannot reach 127.0.0.1:{port}" in line
    else:
        assert proc.returncode == 1
        assert "route broken: " + where in proc.stdout and f"cannot reach 127.0.0.1:{port}" in proc.stdout


def test_max_errors_is_a_budget_of_errored_tests(tmp_path):
    sim_cfg = SimConfig(faults=Faults(server_error=1.0))
    with SimProcess(sim_cfg) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=4, models=model(
            "sim-good", "gw", "single", workers=2, qps=100, max_retries=0)))
        outcomes = {}
        for budget in ("3", "4", "50%", "100%"):
            proc = run(config, tmp_path, "--no-preflight", "--json", "--max-errors", budget)
            result = json.loads(proc.stdout)
            assert result["errored"] == result["planned"] == 4
            outcomes[budget] = proc.returncode
        bad = run(config, tmp_path, "--max-errors", "lots")
    assert outcomes == {"3": 1, "4": 0, "50%": 1, "100%": 0}
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "ultra: error: invalid --max-errors 'lots' (a count such as 10, or a share such as 5%)"]
    errored = events(tmp_path / "events.db", "--type", "test.errored")
    assert {e["http_status"] for e in errored} <= {500, 502, 503}
    assert all(e["reason"] == "server_error" and e["message"] for e in errored)


def test_tokens_per_model_and_their_cost(tmp_path):
    with SimProcess(SimConfig(latency=Latency(median_ms=1))) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=3, models=(
            model("sim-good", "gw", "per-key", workers=2, qps=100, input_price=2.5, output_price=10)
            + model("sim-strong-reasoner", "az", "single", workers=2, qps=100,
                    deployments=["sim-strong-reasoner"]))))
        proc = run(config, tmp_path, "--json")
        text = run(config, tmp_path, "--models", "sim-good", "--num-instances", "4")
    assert proc.returncode == 0, proc.stderr
    tokens = {t["model"]: t for t in json.loads(proc.stdout)["tokens"]}
    good = tokens["sim-good"]
    assert good["prompt_tokens"] > 0 and good["completion_tokens"] > 0
    assert good["cost"] == pytest.approx(good["prompt_tokens"] * 2.5e-6 + good["completion_tokens"] * 1e-5)
    assert tokens["sim-strong-reasoner"]["cost"] is None  # no prices in the config
    assert tokens["sim-strong-reasoner"]["reasoning_tokens"] > 0
    assert re.search(r"tokens sim-good: [\d,]+ in, [\d,]+ out, cost \d", text.stdout)
    master = json.loads((tmp_path / "master.json").read_text())
    completed = events(tmp_path / "events.db", "--type", "test.completed")
    for name, node in master["models"].items():
        mine = [e for e in completed if e["model"] == name]
        for field in ("prompt_tokens", "completion_tokens", "reasoning_tokens"):
            assert node["overall_stats"][field] == sum(e["usage"][field] for e in mine) > (
                0 if field != "reasoning_tokens" or "reasoner" in name else -1)


def test_tpm_holds_over_every_10s_window(tmp_path):
    # The simulator enforces 60k tokens a minute (10k in any 10 s) on each key; the shard
    # paces itself at the same tpm, so it is never refused and never over. A request with
    # the workflow's tool schemas takes about 1k tokens, a run of 6 tests some 25k.
    with SimProcess(SimConfig(latency=Latency(median_ms=5), limits=Limits(key_tpm=60_000))) as sim:
        config = write(tmp_path, real_providers(sim.url, instances=3, prompts='["baseline", "optimal"]',
                                                models=model("sim-good", "gw", "single", workers=4,
                                                             qps=50, tpm=60_000, key=1)))
        t0 = time.monotonic()
        proc = run(config, tmp_path, "--json")
        elapsed = time.monotonic() - t0
        stats = sim.stats()
    assert proc.returncode == 0, proc.stderr
    route = stats["keys"][key_fingerprint(KEYS["ULTRA_R_KEY1"])]  # `key = 1` chose the key
    assert route["tokens"] > 10_000 and elapsed > 10  # more than one window's worth
    assert route["max_tokens_10s"] <= 10_000
    assert route["rate_limited"] == 0


def _shard_pids(parent: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                pids.append(int(child))
    return pids


def _wait_for_results(db: Path, proc: subprocess.Popen, at_least: int = 2) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists() and len(events(db, "--type", "test.completed")) >= at_least:
            return
        time.sleep(0.3)
    raise AssertionError("no results in time")


@pytest.mark.parametrize("how", ["sigterm-to-one-shard-process", "ctrl-c-with-sigint-ignored"])
def test_interrupted_means_130(tmp_path, how):
    with SimProcess(SimConfig(latency=Latency(median_ms=40))) as sim:
        config = write(tmp_path, sim_models_config(sim.url, instances=3, models=(
            model("sim-good", "gw", "per-key", workers=2, qps=10)
            + model("sim-medium", "az", "single", workers=2, qps=10, deployments=["sim-medium"]))))
        db = tmp_path / "events.db"
        ignore = how == "ctrl-c-with-sigint-ignored"
        proc = subprocess.Popen(  # a shell's background job starts with SIGINT ignored
            [sys.executable, "-m", "ultra", "run", "--config", str(config), "--db", str(db),
             "--out", str(tmp_path / "m.json"), "--processes", "2", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore else None)
        _wait_for_results(db, proc)
        if ignore:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(_shard_pids(proc.pid)[0], signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    result = json.loads(out)
    assert result["interrupted"] and result["crashed_processes"] == 0
    evs = events(db)
    finished = [e for e in evs if e["type"] == "shard.finished"]
    assert len(finished) == len([e for e in evs if e["type"] == "shard.started"]) == 4
    assert any(e["interrupted"] for e in finished)
