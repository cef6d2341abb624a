"""Benchmark suites: what one test is, behind one small interface.

A suite turns a cell of the test matrix into a task, takes that task with a `ChatModel`
(messages and tools in, one response out) and scores it into a `TestResult` (defined with the events: it is the body of
`test.completed`). The
collection machinery (planning, shards, HTTP, the event log) is the same for every suite.

Registering your own suite: expose an object that satisfies `Suite` and name it in your
package's entry points::

    [project.entry-points."ultra.suites"]
    mysuite = "mypackage.bench:SUITE"

or call `register(SUITE)` before running. `ultra run --suite mysuite` then plans, runs and
stores its tests exactly like the built-in `workflow` suite.

A suite declares the metrics its results carry (`TestResult.metrics`) and how each
aggregates over tests::

    metrics = (Metric(name="accuracy"),                   # a mean: avg_accuracy
               Metric(name="off_by_one", aggregate="sum"))  # a sum: total_off_by_one

Each run records the declarations in its `run.started`, so the projections (pure folds of
the log) aggregate by them: master_database.json's stats, results.db's columns and views,
`ultra report metrics`. A metric a result carries undeclared is a mean. A declaration is
refused (one line, exit 2) when a name repeats, is over 64 characters, gives one of the
workflow suite's four metrics another aggregate, or would be shown under a name the
statistics already use (`errors` as a sum: `total_errors`).
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import msgspec

from ultra.defaults import MAX_TURNS
from ultra.errors import UserError
from ultra.events import WORKFLOW_METRICS, Metric, TestResult, Usage

# a suite's result is the body of `test.completed`, its metrics declared as `Metric`s: one schema
__all__ = ["Metric", "TestResult"]


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    arguments: str = "{}"  # JSON text, as the OpenAI API sends it


class ChatResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One assistant turn, already normalized from the wire format."""

    content: str | None = None
    tool_calls: list[ToolCall] = []
    reasoning_content: str | None = None
    finish_reason: str | None = None
    usage: Usage = Usage()

    @property
    def text(self) -> str:
        """What the model said; reasoning models may leave `content` empty."""
        return self.content or self.reasoning_content or ""


class ChatModel(Protocol):
    """Messages (OpenAI chat format) and tools (OpenAI function schema) in, one turn out.

    Implementations raise `ModelUnavailable` when a request could not be served after their
    retries (the test becomes `test.errored`), and `ContextLengthExceeded` when the
    provider refuses the conversation as too long (the model took the test and failed).
    """

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> ChatResponse: ...


class ModelUnavailable(Exception):
    def __init__(self, reason: str, message: str = "", retries: int = 0,
                 http_status: int | None = None) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message  # the server's own words where it gave any (redacted)
        self.retries = retries
        self.http_status = http_status  # the last HTTP answer; None when none came


class ContextLengthExceeded(Exception):
    pass


class TestSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One planned test: a cell of the matrix plus the instance index."""

    __test__ = False

    test_key: str
    suite: str
    model: str  # canonical model name
    prompt_type: str
    tool_success_rate: float
    difficulty: str
    task_type: str
    index: int  # instance number within its cell, 0-based
    task_id: str


@runtime_checkable
class Suite(Protocol):
    name: str
    difficulties: tuple[str, ...]
    prompt_types: tuple[str, ...]  # every prompt type the suite knows, flawed ones included
    # the scores its results carry in `TestResult.metrics`, and how each aggregates over
    # tests (`Metric`): every run records them in its `run.started`, and the projections
    # aggregate by them (a metric a result carries undeclared is a mean)
    metrics: tuple[Metric, ...]

    @property
    def task_types(self) -> tuple[str, ...]:
        """The task types, in a stable order (a plain class attribute satisfies this too)."""
        ...

    def task_id(self, task_type: str, difficulty: str, index: int) -> str:
        """The task that instance `index` of a cell takes (deterministic)."""
        ...

    async def run(self, spec: TestSpec, model: ChatModel, *, max_turns: int = MAX_TURNS) -> TestResult:
        """Take one test with `model` and score it. Tool results are simulated locally."""
        ...


@runtime_checkable
class SimulatedPolicy(Protocol):
    """What a suite may also offer the loopback simulator (apart from `Suite`: a suite
    runs against any provider, and need not know the simulator)."""

    def simulated_reply(
        self, skill: float, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> dict[str, Any] | None:
        """The simulator's answer (an OpenAI assistant message) for a conversation of this
        suite, by a deterministic policy of the given skill; None if the conversation is not
        one of this suite's."""
        ...


_REGISTRY: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    _REGISTRY[suite.name] = suite
    return suite


def _load_entry_points() -> None:
    for ep in entry_points(group="ultra.suites"):
        if ep.name not in _REGISTRY:
            register(ep.load())


def _import_suite(ref: str) -> Suite:
    """`package.module:ATTR`: a suite that is importable but not registered (e.g. in tests)."""
    import importlib

    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise UserError(f"cannot load suite {ref!r}: expected package.module:ATTR")
    try:
        suite = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:  # a bad or relative name
        raise UserError(f"cannot load suite {ref!r}: {exc}") from None
    if not isinstance(suite, Suite):
        raise UserError(f"{ref!r} is not a suite (a suite has name, difficulties, prompt_types,"
                        " metrics, task_types, task_id and run)")
    return suite


def check_metrics(suite: Suite) -> Suite:
    """The suite, if its metric declarations are well formed (else a `UserError`)."""
    seen: set[str] = set()
    for m in suite.metrics:
        if not isinstance(m, Metric):
            raise UserError(f"suite {suite.name!r}: a metric must be ultra.suites.Metric, not {m!r}")
        try:  # the schema's constraints (a name of 1-64 characters, an aggregate it knows)
            msgspec.convert(msgspec.to_builtins(m), Metric)
        except msgspec.ValidationError as exc:
            raise UserError(f"suite {suite.name!r}: metric {m.name!r}: {exc}") from None
        if m.name in seen:
            raise UserError(f"suite {suite.name!r} declares metric {m.name!r} twice")
        if m.name in WORKFLOW_METRICS and m.aggregate != "mean":
            raise UserError(f"suite {suite.name!r}: metric {m.name!r} is the workflow suite's,"
                            " a mean; name yours otherwise")
        if m.stat in _builtin_stats():
            raise UserError(f"suite {suite.name!r}: metric {m.name!r} would be shown as"
                            f" {m.stat!r}, which the statistics already name; name it otherwise")
        seen.add(m.name)
    return suite


@functools.cache
def _builtin_stats() -> frozenset[str]:
    """The names a stats block of master_database.json gives its own quantities."""
    from projections.master_database import Acc, stats

    return frozenset(stats(Acc()))


def get_suite(name: str, tasks: str | None = None) -> Suite:
    """A suite by registered name or `module:ATTR`; `tasks` swaps in a team's task library."""
    if tasks is not None:
        if name != "workflow":
            raise UserError(f"--tasks applies to the workflow suite, not {name!r}")
        from ultra.suites.workflow import load_suite

        return load_suite(tasks)
    if ":" in name:
        return check_metrics(_import_suite(name))
    if name not in _REGISTRY:
        if name == "workflow":
            from ultra.suites.workflow import SUITE  # built in, even without installed metadata

            register(SUITE)
        else:
            _load_entry_points()
    if name not in _REGISTRY:
        known = ", ".join(sorted(all_suites())) or "none"
        raise UserError(f"unknown suite {name!r} (known: {known})")
    return check_metrics(_REGISTRY[name])


def all_suites() -> dict[str, Suite]:
    get_suite("workflow")
    _load_entry_points()
    return dict(_REGISTRY)
