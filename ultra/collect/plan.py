"""Planning (pure): expand the test matrix, key every test, split each model's tests into
shards by its strategy. Nothing here does I/O; the caller passes in what the log says
is already completed."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import msgspec

from ultra.config import (
    Config, EffectiveModel, MaxTurns, NumInstances, Rate, RequestOptions, checked, effective_model,
)
from ultra.defaults import DEFAULT_CONDITION, MAX_TURNS
from ultra.errors import UserError
from ultra.naming import canonical_model
from ultra.providers import Route, RouteSpec, provider
from ultra.suites import Suite, TestSpec

# One run plans at most this many tests (the plan holds 4 bytes a test, but every key is
# made and looked up once), so a typo such as `--num-instances 100000000` is refused before
# anything is built.
MAX_PLANNED_TESTS = 1_000_000
_T = TypeVar("_T")


class Selection(msgspec.Struct, kw_only=True, frozen=True):
    """Which cells of the matrix to run (from the config's [run], overridden by flags)."""

    suite: str
    models: list[str]
    prompt_types: list[str]
    difficulties: list[str]
    task_types: list[str]
    tool_success_rates: list[float]
    num_instances: int
    max_turns: int = MAX_TURNS


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
    tests: TestSet
    prices: tuple[float, float] | None = None  # per million prompt / completion tokens
    condition: str = DEFAULT_CONDITION  # condition_of(...)[0] of its tests
    condition_fields: dict[str, str] = {}


class Plan(msgspec.Struct, kw_only=True, frozen=True):
    shards: list[Shard]
    planned: int
    skipped_completed: int


def test_key(suite: str, model: str, prompt_type: str, rate: float, difficulty: str,
             task_type: str, index: int, task_id: str, *,
             max_turns: int = MAX_TURNS,
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
    if max_turns != MAX_TURNS:
        parts.append(f"max_turns={max_turns}")
    if options is not None and options != RequestOptions():
        parts.append("options=" + msgspec.json.encode(options, order="sorted").decode())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def condition_of(suite: str, max_turns: int = MAX_TURNS,
                 options: RequestOptions | None = None,
                 tasks: str | None = None) -> tuple[str, dict[str, str]]:
    """A test's condition: every input of its key but the model, the instance and the cell
    (the suite, max_turns, the request options, the task library's digest). (id, fields):
    the fields that differ from the defaults, readable, and a short stable digest of them;
    the defaults are the condition "default"."""
    fields: dict[str, str] = {}
    if suite != "workflow":
        fields["suite"] = suite
    if max_turns != MAX_TURNS:
        fields["max_turns"] = str(max_turns)
    if options is not None and options != RequestOptions():
        fields["options"] = msgspec.json.encode(options, order="sorted").decode()
    if tasks:
        fields["tasks"] = tasks
    if not fields:
        return DEFAULT_CONDITION, {}
    digest = hashlib.sha256(msgspec.json.encode(fields, order="sorted")).hexdigest()[:12]
    return f"c-{digest}", fields


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


def _cells(sel: Selection) -> list[tuple[str, float, str, str]]:
    """The selection's cells (prompt type, rate, difficulty, task type) in plan order."""
    return [(p, r, d, t) for p in sel.prompt_types for r in sel.tool_success_rates
            for d in sel.difficulties for t in sel.task_types]


def _spec(suite: Suite, sel: Selection, model: str, options: RequestOptions | None,
          cell: tuple[str, float, str, str], index: int) -> TestSpec:
    prompt_type, rate, difficulty, task_type = cell
    task_id = suite.task_id(task_type, difficulty, index)
    return TestSpec(
        test_key=test_key(suite.name, model, prompt_type, rate, difficulty, task_type, index,
                          task_id, max_turns=sel.max_turns, options=options),
        suite=suite.name, model=model, prompt_type=prompt_type, tool_success_rate=rate,
        difficulty=difficulty, task_type=task_type, index=index, task_id=task_id,
    )


def iter_tests(suite: Suite, sel: Selection, model: str,
               options: RequestOptions | None = None) -> Iterator[TestSpec]:
    """Every test of the selection for one (canonical) model, in a stable order (made one at
    a time: a plan of a million tests never holds them all)."""
    for cell in _cells(sel):
        for index in range(sel.num_instances):
            yield _spec(suite, sel, model, options, cell, index)


class TestSet(msgspec.Struct, kw_only=True, frozen=True):
    """A shard's tests: their positions in `iter_tests`' order for its model and selection,
    4 bytes a test in the plan and on the way to the shard process (a `TestSpec` held per
    test cost ~250). `specs(suite)` makes them one at a time, as workers ask for them."""

    __test__ = False

    selection: Selection
    model: str
    options: RequestOptions | None = None
    positions: bytes = b""  # array("I"), ascending

    def __len__(self) -> int:
        return len(self.positions) // _POSITION.itemsize

    def __bool__(self) -> bool:
        return bool(self.positions)

    def specs(self, suite: Suite) -> Iterator[TestSpec]:
        wanted = array(_POSITION.typecode)
        wanted.frombytes(self.positions)
        cells = _cells(self.selection)
        for position in wanted:
            cell, index = divmod(position, self.selection.num_instances)
            yield _spec(suite, self.selection, self.model, self.options, cells[cell], index)


_POSITION = array("I")


def _routes(config: Config, eff: EffectiveModel, bases: Mapping[str, str]) -> list[RouteSpec]:
    """The routes the model's strategy uses, as its provider builds them (`bases`: the
    base URL of a server a provider started for the run, by provider name)."""
    p = config.providers[eff.provider]
    return provider(p.kind).routes(p, eff, bases.get(eff.provider))


def selection_keys(config: Config, suite: Suite, sel: Selection) -> Iterator[str]:
    """The test keys of every test the selection names (what resume looks up), made as
    `make_plan` makes them, one at a time."""
    for name in sel.models:
        for t in iter_tests(suite, sel, canonical_model(name), effective_model(config, name).options):
            yield t.test_key


def route_names(config: Config, eff: EffectiveModel) -> list[dict[str, str | int]]:
    """The routes a model's shards use, for people: instance and key index or deployment."""
    return [{"instance": instance, **({"key": key} if key is not None else {}),
             **({"deployment": dep} if dep is not None else {})}
            for instance, key, dep, _ in _routes(config, eff, {})]


def split_evenly(items: Sequence[_T], n: int) -> list[Sequence[_T]]:
    """n parts whose sizes differ by at most one (round robin keeps cells mixed)."""
    return [items[i::n] for i in range(n)]


def make_plan(config: Config, suite: Suite, sel: Selection, completed: set[str],
              bases: Mapping[str, str] | None = None, tasks_id: str | None = None) -> Plan:
    shards: list[Shard] = []
    planned = skipped = 0
    for name in sel.models:
        eff = effective_model(config, name)
        model = canonical_model(name)
        todo = array(_POSITION.typecode, (j for j, t in enumerate(iter_tests(suite, sel, model, eff.options))
                                          if t.test_key not in completed))
        skipped += len(_cells(sel)) * sel.num_instances - len(todo)
        planned += len(todo)
        routes = _routes(config, eff, bases or {})
        p = config.providers[eff.provider]
        condition, condition_fields = condition_of(suite.name, sel.max_turns, eff.options,
                                                   tasks_id)
        for (instance, key_index, deployment, route), positions in zip(routes, split_evenly(todo, len(routes))):
            shared = None
            if (p.key_qps or p.key_tpm) and route.shape == "openai":
                shared = SharedLimit(name=f"{eff.provider}/key{key_index or 0}",
                                     qps=p.key_qps, tpm=p.key_tpm)
            shards.append(Shard(
                shard_id=f"{model}@{instance}", model=model, instance=instance,
                provider=eff.provider, strategy=eff.strategy,
                key_index=key_index, deployment=deployment, workers=eff.workers, qps=eff.qps,
                request_timeout=eff.request_timeout, test_timeout=eff.test_timeout,
                max_retries=eff.max_retries, max_turns=sel.max_turns, route=route,
                shared_limit=shared, tpm=eff.tpm, options=eff.options,
                broken_after=eff.broken_after,
                tests=TestSet(selection=sel, model=model, options=eff.options, positions=positions.tobytes()),
                prices=None if eff.input_price is None and eff.output_price is None
                else (eff.input_price or 0.0, eff.output_price or 0.0),
                condition=condition, condition_fields=condition_fields,
            ))
    return Plan(shards=shards, planned=planned, skipped_completed=skipped)


def effective_qps(shard: Shard) -> float:
    """The rate a shard can reach: its own `qps`, capped by its key's `key_qps` when it
    shares a key budget (every shard on that key then draws from the same one)."""
    limit = shard.shared_limit.qps if shard.shared_limit else None
    return min(shard.qps, limit) if limit else shard.qps


__all__ = ["check_selection", "condition_of", "effective_qps",
           "expand_prompt_types", "iter_tests", "make_plan", "MAX_PLANNED_TESTS", "Plan", "route_names",
           "Selection", "selection_keys", "Shard", "SharedLimit", "split_evenly", "test_key", "TestSet"]
