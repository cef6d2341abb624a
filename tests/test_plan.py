"""Planning is pure: matrix expansion, test keys, shard strategies, even splits, resume."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.collection_helpers import ultra

from ultra.config import load_config, masked
from ultra.errors import UserError
from ultra.collect.plan import Selection, check_selection, make_plan, split_evenly
from ultra.providers.openai import default_key
from ultra.suites import TestResult


class GridSuite:
    """A minimal suite: enough for the planner, which never runs a test."""

    name = "grid"
    task_types = ("a", "b", "c")
    difficulties = ("easy", "hard")
    prompt_types = ("baseline", "optimal", "flawed_x")
    metrics = ()

    def task_id(self, task_type: str, difficulty: str, index: int) -> str:
        return f"{task_type}-{index % 4}"

    async def run(self, spec, model, *, max_turns=10):  # pragma: no cover - not run here
        return TestResult(outcome="failure", error_category="other")

    def simulated_reply(self, skill, messages, tools):  # pragma: no cover
        return None


SUITE = GridSuite()


def selection(models, **kw) -> Selection:
    base = dict(suite="grid", models=models, prompt_types=["baseline", "optimal"],
                difficulties=["easy", "hard"], task_types=["a", "b", "c"],
                tool_success_rates=[0.8, 0.6], num_instances=3)
    base.update(kw)
    return Selection(**base)


def test_presets_shard_by_strategy():
    config, _ = load_config("presets")
    plan = make_plan(config, SUITE, selection(list(config.models)), completed=set())
    by_model = Counter(s.model for s in plan.shards)
    assert by_model["qwen2.5-72b-instruct"] == 3  # per key
    assert by_model["DeepSeek-V3-0324"] == 3  # per deployment
    assert by_model["o3-0416-global"] == 1 and by_model["gpt-5-mini"] == 1
    qwen = [s for s in plan.shards if s.model == "qwen2.5-72b-instruct"]
    assert sorted(s.key_index for s in qwen) == [0, 1, 2]
    assert sorted(s.route.key_env for s in qwen) == [
        "ULTRA_GATEWAY_KEY0", "ULTRA_GATEWAY_KEY1", "ULTRA_GATEWAY_KEY2"]
    assert all((s.workers, s.qps) == (2, 10) for s in qwen)
    ds = [s for s in plan.shards if s.model == "DeepSeek-V3-0324"]
    assert sorted(s.instance for s in ds) == ["DeepSeek-V3-0324", "DeepSeek-V3-0324-2", "DeepSeek-V3-0324-3"]
    assert all(f"/openai/deployments/{s.deployment}/chat/completions?api-version=" in s.route.url for s in ds)
    assert all(s.route.api_model is None for s in ds)  # Azure names the deployment in the URL
    # 2 prompts x 2 difficulties x 3 task types x 2 rates x 3 instances per model
    assert plan.planned == 13 * 72
    assert len(plan.shards) == 5 * 3 + 3 * 3 + 5


@settings(max_examples=60, deadline=None)
@given(n_tests=st.integers(0, 200), n_parts=st.integers(1, 7))
def test_split_is_even_and_complete(n_tests, n_parts):
    items = list(range(n_tests))
    parts = split_evenly(items, n_parts)  # type: ignore[arg-type]
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sorted(x for p in parts for x in p) == items


def test_test_keys_are_deterministic_and_unique():
    config, _ = load_config("presets")
    sel = selection(["gpt-4o-mini", "kimi-k2"])
    a = make_plan(config, SUITE, sel, completed=set())
    b = make_plan(config, SUITE, sel, completed=set())
    keys_a = [t.test_key for s in a.shards for t in s.tests.specs(SUITE)]
    assert keys_a == [t.test_key for s in b.shards for t in s.tests.specs(SUITE)]
    assert len(set(keys_a)) == len(keys_a) == 2 * 72


def test_resume_skips_completed_tests_only():
    config, _ = load_config("presets")
    sel = selection(["DeepSeek-R1-0528"])
    full = make_plan(config, SUITE, sel, completed=set())
    keys = [t.test_key for s in full.shards for t in s.tests.specs(SUITE)]
    done = set(keys[::3])
    resumed = make_plan(config, SUITE, sel, completed=done)
    left = [t.test_key for s in resumed.shards for t in s.tests.specs(SUITE)]
    assert resumed.skipped_completed == len(done)
    assert sorted(left) == sorted(set(keys) - done)
    sizes = [len(s.tests) for s in resumed.shards]
    assert max(sizes) - min(sizes) <= 1


def test_selection_errors_name_the_bad_value():
    config, _ = load_config("presets")
    with pytest.raises(UserError, match="unknown model 'nope'"):
        check_selection(config, SUITE, selection(["nope"]))
    with pytest.raises(UserError, match="invalid tool success rate 1.5"):
        check_selection(config, SUITE, selection(["kimi-k2"], tool_success_rates=[1.5]))
    with pytest.raises(UserError, match="unknown prompt type"):
        check_selection(config, SUITE, selection(["kimi-k2"], prompt_types=["weird"]))


def test_per_key_base_urls_and_azure_single_route():
    from ultra.config import Config, ModelConfig, ProviderConfig

    config = Config(
        providers={
            "gw": ProviderConfig(kind="openai", api_key_envs=["K0", "K1"],
                                 base_urls=["http://a.invalid/v1", "http://b.invalid/v1/"]),
            "az": ProviderConfig(kind="azure", endpoint="http://az.invalid/", api_key_env="AZ",
                                 api_version="2025-01-01"),
        },
        models={
            "qwen2.5-7b-instruct": ModelConfig(provider="gw", model_class="open-multikey"),
            "gpt-4o-mini": ModelConfig(provider="az", model_class="closed-azure"),
        },
    )
    plan = make_plan(config, SUITE, selection(list(config.models)), completed=set())
    qwen = sorted((s for s in plan.shards if s.model == "qwen2.5-7b-instruct"), key=lambda s: s.key_index)
    assert [s.route.url for s in qwen] == ["http://a.invalid/v1/chat/completions",
                                           "http://b.invalid/v1/chat/completions"]
    assert [s.route.key_env for s in qwen] == ["K0", "K1"]
    assert all(s.route.api_model == "qwen2.5-7b-instruct" for s in qwen)
    (mini,) = [s for s in plan.shards if s.model == "gpt-4o-mini"]
    assert mini.strategy == "single" and mini.instance == "gpt-4o-mini"
    assert mini.route.url == ("http://az.invalid/openai/deployments/gpt-4o-mini/chat/completions"
                              "?api-version=2025-01-01")
    assert mini.route.key_env == "AZ" and (mini.workers, mini.qps) == (50, 100)


def test_deployment_names_are_escaped_path_segments():
    from ultra.config import Config, ModelConfig, ProviderConfig

    config = Config(
        providers={"az": ProviderConfig(kind="azure", endpoint="http://az.invalid", api_key_env="AZ")},
        models={"m": ModelConfig(provider="az", strategy="per-deployment",
                                 deployments=["../../../stats/reset?", "a b/c#d"])},
    )
    plan = make_plan(config, SUITE, selection(["m"]), completed=set())
    urls = sorted(s.route.url for s in plan.shards)
    assert urls == [
        "http://az.invalid/openai/deployments/..%2F..%2F..%2Fstats%2Freset%3F/chat/completions"
        "?api-version=2024-12-01-preview",
        "http://az.invalid/openai/deployments/a%20b%2Fc%23d/chat/completions"
        "?api-version=2024-12-01-preview",
    ]


def test_every_input_that_changes_a_result_is_in_the_test_key():
    from ultra.defaults import MAX_TURNS
    from ultra.collect.plan import test_key

    cell = ("grid", "m", "baseline", 0.8, "easy", "a", 0, "a-0")
    # The default keeps the key every earlier log was written with (resume keeps working).
    assert test_key(*cell) == test_key(*cell, max_turns=MAX_TURNS) == "3c60b9636609efbd713dc443"
    for rate in (0.6, 0.75, 0.9999, 1.0, 0.0):  # keys as before for every 4-digit rate
        old = "|".join(("grid", "m", "baseline", str(round(rate, 4)), "easy", "a", "0", "a-0"))
        assert test_key("grid", "m", "baseline", rate, "easy", "a", 0, "a-0") == \
            __import__("hashlib").sha256(old.encode()).hexdigest()[:24]
    keys = {test_key(*cell, max_turns=n) for n in (1, 5, 10, 11, 50)}
    assert len(keys) == 5
    config, _ = load_config("presets")
    short = make_plan(config, SUITE, selection(["kimi-k2"], max_turns=3), completed=set())
    normal = make_plan(config, SUITE, selection(["kimi-k2"]), completed=set())
    done = {t.test_key for s in normal.shards for t in s.tests.specs(SUITE)}
    assert make_plan(config, SUITE, selection(["kimi-k2"], max_turns=3), completed=done).planned \
        == short.planned == normal.planned  # tests at 10 turns are not tests at 3 turns
    assert all(s.max_turns == 3 for s in short.shards)
    # each field of the cell changes the key
    for i, other in enumerate(("x", "m2", "optimal", 0.80004, "hard", "b", 1, "b-0")):
        changed = list(cell)
        changed[i] = other
        assert test_key(*changed) != test_key(*cell), i


def test_request_options_are_part_of_the_test_key():
    from ultra.config import RequestOptions
    from ultra.collect.plan import test_key

    cell = ("grid", "m", "baseline", 0.8, "easy", "a", 0, "a-0")
    plain = test_key(*cell)
    assert test_key(*cell, options=RequestOptions()) == plain  # defaults: the key as before
    keys = {test_key(*cell, options=o) for o in (
        RequestOptions(temperature=0.0), RequestOptions(temperature=0.7), RequestOptions(max_tokens=256),
        RequestOptions(max_completion_tokens=256), RequestOptions(extra_body={"top_p": 0.5}))}
    assert len(keys) == 5 and plain not in keys


def test_processes_follow_the_load():
    """A small load runs in one shard process; the presets' full load (645 requests/s its
    workers can drive, under 1,380 qps of limits) takes what its CPU costs at the calibrated
    cost per request, never more processes than CPUs or shards."""
    import os

    from ultra.collect.processes import (CPU_PER_REQUEST_S, PROCESS_CPU_SHARE, needed_processes,
                                         offered_rps)

    demo, _ = load_config("demo")
    small = make_plan(demo, SUITE, selection(list(demo.models)), completed=set())
    assert needed_processes(small) == 1
    config, _ = load_config("presets")
    full = make_plan(config, SUITE, selection(list(config.models)), completed=set())
    assert sum(map(offered_rps, full.shards)) == 645
    want = math.ceil(645 * CPU_PER_REQUEST_S / PROCESS_CPU_SHARE)
    assert needed_processes(full) == max(1, min(os.cpu_count() or 1, len(full.shards), want))


def test_processes_follow_the_measured_latency_and_plan_shows_the_choice(tmp_path):
    """Workers against a fast server drive far more than one request a second each: at the
    latency the preflight measured, the demo's load needs every CPU; `ultra plan` says how
    many processes a run starts and why."""
    import os

    from ultra.collect.processes import (CPU_PER_REQUEST_S, PROCESS_CPU_SHARE, choose_processes,
                                         needed_processes, offered_rps)

    demo, _ = load_config("demo")
    small = make_plan(demo, SUITE, selection(list(demo.models)), completed=set())
    assumed = choose_processes(small)
    assert (assumed.processes, assumed.measured) == (1, False)
    config, _ = load_config("presets")
    full = make_plan(config, SUITE, selection(list(config.models)), completed=set())
    fast = {s.shard_id: 0.002 for s in full.shards}  # 2 ms answers: the qps limits bind
    assert sum(offered_rps(s, 0.002) for s in full.shards) == sum(s.qps for s in full.shards)
    choice = choose_processes(full, fast)
    assert choice.measured and choice.offered_rps == sum(s.qps for s in full.shards)
    want = math.ceil(choice.offered_rps * CPU_PER_REQUEST_S / PROCESS_CPU_SHARE)
    assert want > needed_processes(full)  # more than at an assumed second a request
    assert choice.processes == min(os.cpu_count() or 1, len(full.shards), want)
    assert "requests/s offered at the routes' preflight latency" in choice.line()
    shown = ultra("plan", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    got = json.loads(shown.stdout)["processes"]
    assert got == dict(processes=1, offered_rps=assumed.offered_rps,
                       cpu_per_request_ms=CPU_PER_REQUEST_S * 1000, measured=False)
    table = ultra("plan", cwd=tmp_path)
    assert "1 shard process: " in table.stdout and "an assumed 1 s per request" in table.stdout


def test_processes_share_the_request_rate_not_only_the_tests():
    """Balanced by planned tests alone, the presets' processes got 370 and 275 requests/s
    (the seed's load: 597 and 498); by rate, 320 and 325."""
    from ultra.collect.processes import assign, offered_rps

    config, _ = load_config("presets")
    full = make_plan(config, SUITE, selection(list(config.models)), completed=set())
    groups = assign(full.shards, 2)
    rates = [sum(map(offered_rps, g)) for g in groups]
    assert sorted(s.shard_id for g in groups for s in g) == sorted(s.shard_id for s in full.shards)
    assert max(rates) - min(rates) <= 10  # 645 in multiples of 5: 5 apart is the best split
    for g in groups:  # a shared key budget's shards stay in one process
        names = {s.shared_limit.name for s in g if s.shared_limit}
        assert not any(s.shared_limit and s.shared_limit.name in names
                       for other in groups if other is not g for s in other)


def test_single_route_models_spread_over_the_gateway_keys_and_share_their_budget():
    config, _ = load_config("presets")
    closed = ["o3-0416-global", "gemini-2.5-flash-06-17", "kimi-k2"]
    plan = make_plan(config, SUITE, selection(closed + ["qwen2.5-7b-instruct"]), set())
    keys = {s.model: s.key_index for s in plan.shards if s.model in closed}
    assert keys == {m: default_key(m, 3) for m in closed}  # stable: a hash of the name
    assert len(set(default_key(f"model-{i}", 3) for i in range(30))) == 3  # spread, not all 0
    # every gateway shard on key k draws from one budget per key, named by the key
    for s in plan.shards:
        if s.provider == "gateway":
            assert s.shared_limit is not None and s.shared_limit.qps == 10
            assert s.shared_limit.name == f"gateway/key{s.key_index}"


def test_a_configured_key_is_the_key_used(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[providers.gw]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                    'api_key_envs = ["K0", "K1", "K2"]\n'
                    '[models.m]\nprovider = "gw"\nstrategy = "single"\nkey = 2\n'
                    '[models.bad]\nprovider = "gw"\nstrategy = "single"\nkey = 3\n')
    with pytest.raises(UserError, match=r"model 'bad': key 3 is not a key of provider 'gw' \(0..2\)"):
        load_config(path)
    path.write_text(path.read_text().split("[models.bad]")[0])
    config, _ = load_config(path)
    (shard,) = make_plan(config, SUITE, selection(["m"]), set()).shards
    assert shard.key_index == 2 and shard.route.key_env == "K2"


def test_config_show_lists_only_real_routes():
    config, _ = load_config("presets")
    shown = masked(config)["models"]
    assert shown["gpt-4o-mini"]["routes"] == [{"instance": "gpt-4o-mini", "deployment": "gpt-4o-mini"}]
    assert [r["deployment"] for r in shown["DeepSeek-V3-0324"]["routes"]] == [
        "DeepSeek-V3-0324", "DeepSeek-V3-0324-2", "DeepSeek-V3-0324-3"]
    assert shown["kimi-k2"]["routes"] == [{"instance": "kimi-k2", "key": default_key("kimi-k2", 3)}]
    assert all("deployments" not in m for m in shown.values())
    assert shown["o3-0416-global"]["options"] == {"max_completion_tokens": 8192}


def test_a_shards_test_set_is_its_positions_and_survives_the_trip_to_a_shard_process():
    """A TestSet holds 4 bytes a test; decoded as a shard process decodes its job, it makes
    the very specs the plan chose, in order, and nothing completed."""
    import msgspec

    from ultra.collect.plan import Plan

    config, _ = load_config("presets")
    sel = selection(["DeepSeek-R1-0528"])
    everything = [t for s in make_plan(config, SUITE, sel, completed=set()).shards
                  for t in s.tests.specs(SUITE)]
    done = {t.test_key for t in everything[::4]}
    plan = make_plan(config, SUITE, sel, completed=done)
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(plan), type=Plan)
    for shard in back.shards:
        assert len(shard.tests.positions) == 4 * len(shard.tests)
    specs = [t for s in back.shards for t in s.tests.specs(SUITE)]
    assert sorted(specs, key=lambda t: t.test_key) == sorted(
        (t for t in everything if t.test_key not in done), key=lambda t: t.test_key)
    assert sum(len(s.tests) for s in back.shards) == back.planned == len(everything) - len(done)
