"""Planning (pure): expand the test matrix, key every test, split each model's tests into
shards by its strategy. Nothing here does I/O; the caller passes in what the log says
is already completed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from urllib.parse import quote

import msgspec

from ultra.config import (
    Config, EffectiveModel, MaxTurns, NumInstances, Rate, RequestOptions, checked, effective_model,
)
from ultra.errors import UserError
from ultra.naming import canonical_model
from ultra.suites import Suite, TestSpec

SIM_API_VERSION = "2024-12-01-preview"
DEFAULT_MAX_TURNS = 10
# One run plans at most this many tests: the plan is held in memory (a few hundred bytes a
# test), so a typo such as `--num-instances 100000000` is refused before anything is built.
MAX_PLANNED_TESTS = 1_000_000


class Selection(msgspec.Struct, kw_only=True, frozen=True):
    """Which cells of the matrix to run (from the config's [run], overridden by flags)."""

    suite: str
    models: list[str]
    prompt_types: list[str]
    difficulties: list[str]
    task_types: list[str]
    tool_success_rates: list[float]
    num_instances: int
    max_turns: int = DEFAULT_MAX_TURNS


class Route(msgspec.Struct, kw_only=True, frozen=True):
    """Where a shard's requests go. The secret itself is never here: only the name of the
    environment variable that holds it (or, for the simulator, a non-secret literal)."""

    url: str
    shape: str  # "openai" or "azure": which auth header and whether the body names the model
    api_model: str | None  # model name sent in the body (openai shape)
    key_env: str | None = None
    key_literal: str | None = None


class SharedLimit(msgspec.Struct, kw_only=True, frozen=True):
    """A rate budget several shards draw from (one API key used by several models)."""

    name: str
    qps: float | None = None
    tpm: float | None = None


class Shard(msgspec.Struct, kw_only=True, frozen=True):
    shard_id: str
    model: str  # canonical
    instance: str  # route name
    provider: str
    strategy: str
    simulated: bool
    key_index: int | None
    deployment: str | None
    workers: int
    qps: float
    request_timeout: float
    test_timeout: float
    max_retries: int
    max_turns: int
    route: Route
    shared_limit: SharedLimit | None = None
    tpm: float | None = None
    options: RequestOptions = RequestOptions()
    broken_after: int = 3
    tests: list[TestSpec]
    condition: str = "default"  # condition_of(...)[0] of its tests
    condition_fields: dict[str, str] = {}


class Plan(msgspec.Struct, kw_only=True, frozen=True):
    shards: list[Shard]
    planned: int
    skipped_completed: int


def test_key(suite: str, model: str, prompt_type: str, rate: float, difficulty: str,
             task_type: str, index: int, task_id: str, *,
             max_turns: int = DEFAULT_MAX_TURNS,
             options: RequestOptions | None = None) -> str:
    """Deterministic identity of one test: every input that changes its result is in it
    (same cell, instance, task and settings -> same key; any other -> another key).

    Settings that joined the key later (`max_turns`, the request options such as
    temperature) enter it only when they differ from their defaults, so the keys of logs
    written before stay valid and resume still works.
    """
    # The rate exactly (repr), not its 4-digit projection key: 0.80004 is not 0.8. For rates
    # of at most 4 decimals both spell the same, so keys written before are unchanged.
    parts = [suite, model, prompt_type, repr(float(rate)), difficulty, task_type, str(index), task_id]
    if max_turns != DEFAULT_MAX_TURNS:
        parts.append(f"max_turns={max_turns}")
    if options is not None and options != RequestOptions():
        parts.append("options=" + msgspec.json.encode(options, order="sorted").decode())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


DEFAULT_CONDITION = "default"


def condition_of(suite: str, max_turns: int = DEFAULT_MAX_TURNS,
                 options: RequestOptions | None = None,
                 tasks: str | None = None) -> tuple[str, dict[str, str]]:
    """A test's condition: every input of its key but the model, the instance and the cell
    (the suite, max_turns, the request options, the task library's digest). (id, fields):
    the fields that differ from the defaults, readable, and a short stable digest of them;
    the defaults are the condition "default"."""
    fields: dict[str, str] = {}
    if suite != "workflow":
        fields["suite"] = suite
    if max_turns != DEFAULT_MAX_TURNS:
        fields["max_turns"] = str(max_turns)
    if options is not None and options != RequestOptions():
        fields["options"] = msgspec.json.encode(options, order="sorted").decode()
    if tasks:
        fields["tasks"] = tasks
    if not fields:
        return DEFAULT_CONDITION, {}
    digest = hashlib.sha256(msgspec.json.encode(fields, order="sorted")).hexdigest()[:12]
    return f"c-{digest}", fields


def condition_label(fields: dict[str, str]) -> str:
    """`max_turns=4, options=...`: what sets a condition apart ("default" for none)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(fields.items())) or DEFAULT_CONDITION


def expand_prompt_types(suite: Suite, names: Iterable[str]) -> list[str]:
    """Prompt type names with `all` (the suite's unflawed types) and `all_with_flawed`
    (every type it knows) expanded, in order, without repeats."""
    out: list[str] = []
    for name in names:
        if name == "all":
            out += [t for t in suite.prompt_types if not t.startswith("flawed_")]
        elif name == "all_with_flawed":
            out += list(suite.prompt_types)
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def check_selection(config: Config, suite: Suite, sel: Selection) -> None:
    """Raise UserError on the first thing in a selection that names nothing real."""

    def unknown(what: str, given: Iterable[str], known: Iterable[str]) -> None:
        known = list(known)
        for g in given:
            if g not in known:
                raise UserError(f"unknown {what} {g!r} (known: {', '.join(known)})")

    unknown("model", sel.models, config.models)
    unknown("prompt type", sel.prompt_types, suite.prompt_types)
    unknown("difficulty", sel.difficulties, suite.difficulties)
    unknown("task type", sel.task_types, suite.task_types)
    for rate in sel.tool_success_rates:
        checked(rate, Rate, "tool success rate")
    checked(sel.num_instances, NumInstances, "--num-instances")
    checked(sel.max_turns, MaxTurns, "--max-turns")
    tests = len(sel.models) * len(sel.prompt_types) * len(sel.tool_success_rates) * \
        len(sel.difficulties) * len(sel.task_types) * sel.num_instances
    if tests > MAX_PLANNED_TESTS:
        raise UserError(f"the selection is {tests:,} tests; one run plans at most "
                        f"{MAX_PLANNED_TESTS:,} (fewer --num-instances, models or cells)")


def expand(suite: Suite, sel: Selection, model: str,
           options: RequestOptions | None = None) -> list[TestSpec]:
    """Every test of the selection for one (canonical) model, in a stable order."""
    tests = []
    for prompt_type in sel.prompt_types:
        for rate in sel.tool_success_rates:
            for difficulty in sel.difficulties:
                for task_type in sel.task_types:
                    for index in range(sel.num_instances):
                        task_id = suite.task_id(task_type, difficulty, index)
                        tests.append(TestSpec(
                            test_key=test_key(suite.name, model, prompt_type, rate, difficulty,
                                              task_type, index, task_id, max_turns=sel.max_turns,
                                              options=options),
                            suite=suite.name, model=model, prompt_type=prompt_type,
                            tool_success_rate=rate, difficulty=difficulty,
                            task_type=task_type, index=index, task_id=task_id,
                        ))
    return tests


def default_key(model: str, keys: int) -> int:
    """The key a single-route model uses on a multi-key provider when the config names none:
    a stable hash of its name, so such models spread over the keys (not all on key 0)."""
    return int.from_bytes(hashlib.sha256(model.encode()).digest()[:8], "big") % max(1, keys)


def _routes(config: Config, eff: EffectiveModel, sim_url: str) -> list[tuple[str, int | None, str | None, Route]]:
    """(instance, key_index, deployment, route) for each route the strategy uses."""
    p = config.providers[eff.provider]
    shape = p.shape if p.kind == "sim" else p.kind
    base = (p.url or sim_url) if p.kind == "sim" else None
    prefix = p.route_prefix or eff.name
    if shape == "openai":
        keys: list[tuple[str | None, str | None, str]]  # (key env, literal key, base URL)
        if p.kind == "sim":
            keys = [(None, f"sim-key-{i}", f"{base}/v1") for i in range(p.keys)]
        else:
            urls = p.base_urls or [p.base_url or ""] * len(p.api_key_envs)
            keys = [(env, None, url) for env, url in zip(p.api_key_envs, urls)]
        indexed = list(enumerate(keys))
        if eff.strategy != "per-key":
            k = eff.key if eff.key is not None else default_key(eff.name, len(keys))
            indexed = indexed[k:k + 1]
        return [
            (f"{prefix}-key{i}" if eff.strategy == "per-key" else eff.name, i, None,
             Route(url=f"{url.rstrip('/')}/chat/completions", shape="openai",
                   api_model=eff.api_model, key_env=env, key_literal=literal))
            for i, (env, literal, url) in indexed
        ]
    endpoint = base if p.kind == "sim" else (p.endpoint or "").rstrip("/")
    version = SIM_API_VERSION if p.kind == "sim" else p.api_version
    deployments = eff.deployments if eff.strategy == "per-deployment" else eff.deployments[:1]
    return [
        (dep, None, dep,
         # A deployment name is one path segment, escaped: `../x?` must not reach another URL.
         Route(url=f"{endpoint}/openai/deployments/{quote(dep, safe='')}/chat/completions"
                   f"?api-version={quote(version, safe='')}",
               shape="azure", api_model=None,
               key_env=None if p.kind == "sim" else p.api_key_env,
               key_literal="sim-azure-key" if p.kind == "sim" else None))
        for dep in deployments
    ]


def selection_keys(config: Config, suite: Suite, sel: Selection) -> set[str]:
    """The test keys of every test the selection names (what resume looks up), expanded
    as `make_plan` expands them."""
    return {t.test_key for name in sel.models
            for t in expand(suite, sel, canonical_model(name), effective_model(config, name).options)}


def route_names(config: Config, eff: EffectiveModel) -> list[dict[str, str | int]]:
    """The routes a model's shards use, for people: instance and key index or deployment."""
    return [{"instance": instance, **({"key": key} if key is not None else {}),
             **({"deployment": dep} if dep is not None else {})}
            for instance, key, dep, _ in _routes(config, eff, "http://127.0.0.1:0")]


def split_evenly(tests: list[TestSpec], n: int) -> list[list[TestSpec]]:
    """n parts whose sizes differ by at most one (round robin keeps cells mixed)."""
    return [tests[i::n] for i in range(n)]


def make_plan(config: Config, suite: Suite, sel: Selection, completed: set[str],
              sim_url: str = "http://127.0.0.1:0", tasks_id: str | None = None) -> Plan:
    shards: list[Shard] = []
    planned = skipped = 0
    for name in sel.models:
        eff = effective_model(config, name)
        model = canonical_model(name)
        all_tests = expand(suite, sel, model, eff.options)
        todo = [t for t in all_tests if t.test_key not in completed]
        skipped += len(all_tests) - len(todo)
        planned += len(todo)
        routes = _routes(config, eff, sim_url)
        provider = config.providers[eff.provider]
        condition, condition_fields = condition_of(suite.name, sel.max_turns, eff.options,
                                                   tasks_id)
        for (instance, key_index, deployment, route), tests in zip(routes, split_evenly(todo, len(routes))):
            shared = None
            if (provider.key_qps or provider.key_tpm) and route.shape == "openai":
                shared = SharedLimit(name=f"{eff.provider}/key{key_index or 0}",
                                     qps=provider.key_qps, tpm=provider.key_tpm)
            shards.append(Shard(
                shard_id=f"{model}@{instance}", model=model, instance=instance,
                provider=eff.provider, strategy=eff.strategy,
                simulated=provider.kind == "sim",
                key_index=key_index, deployment=deployment, workers=eff.workers, qps=eff.qps,
                request_timeout=eff.request_timeout, test_timeout=eff.test_timeout,
                max_retries=eff.max_retries, max_turns=sel.max_turns, route=route,
                shared_limit=shared, tpm=eff.tpm, options=eff.options,
                broken_after=eff.broken_after, tests=tests,
                condition=condition, condition_fields=condition_fields,
            ))
    return Plan(shards=shards, planned=planned, skipped_completed=skipped)


def effective_qps(shard: Shard) -> float:
    """The rate a shard can reach: its own `qps`, capped by its key's `key_qps` when it
    shares a key budget (every shard on that key then draws from the same one)."""
    limit = shard.shared_limit.qps if shard.shared_limit else None
    return min(shard.qps, limit) if limit else shard.qps
