"""The workflow suite: multi-turn tool-use tasks, simulated tools, pure scoring.

    from ultra.suites.workflow import SUITE          # the built-in library
    suite = load_suite("team_tasks.json")            # a team's own (`--tasks FILE`)

One test: the task of `spec.task_id` (instance i of a cell takes task i mod N of its type,
so every model gets the same tasks), prompted by `spec.prompt_type` (a flawed plan drawn
from the test key), run by `executor.execute` against a `ChatModel` with tools simulated
from a test-key-seeded RNG, scored by `scoring.score`. Modules: library (tasks, tools,
validation), registry (tool schemas), flaws (plans), prompts, executor, scoring, policies
(the simulator's models).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ultra.defaults import MAX_TURNS
from ultra.errors import UserError
from ultra.suites import ChatModel, Metric, TestResult, TestSpec
from ultra.suites.workflow.executor import execute
from ultra.suites.workflow.flaws import FLAWS, Plan, inject, optimal_plan
from ultra.suites.workflow.library import DIFFICULTIES, TASK_TYPES, Library, default_library, load_library
from ultra.suites.workflow.policies import Policies
from ultra.suites.workflow.prompts import BASE_PROMPT_TYPES, MARKER, initial_messages
from ultra.suites.workflow.scoring import breakdown, score

FLAWED_PROMPT_TYPES: tuple[str, ...] = tuple(f"flawed_{f}" for f in FLAWS)
PROMPT_TYPES: tuple[str, ...] = (*BASE_PROMPT_TYPES, *FLAWED_PROMPT_TYPES)

__all__ = [
    "BASE_PROMPT_TYPES", "DIFFICULTIES", "FLAWED_PROMPT_TYPES", "MARKER", "PROMPT_TYPES",
    "SUITE", "TASK_TYPES", "WorkflowSuite", "load_suite", "test_seed",
]


def test_seed(test_key: str, purpose: str) -> int:
    """A 64-bit seed from the test key: the same test replays the same way anywhere."""
    return int.from_bytes(hashlib.blake2b(f"{purpose}:{test_key}".encode(), digest_size=8).digest(), "big")


test_seed.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def plan_for(library: Library, spec: TestSpec) -> Plan | None:
    """The plan shown for a prompt type: none, the optimal one, or a flawed one."""
    if spec.prompt_type in ("baseline", "cot"):
        return None
    view = library.view(spec.task_id)
    plan = optimal_plan(view)
    if spec.prompt_type == "optimal":
        return plan
    flaw = spec.prompt_type.removeprefix("flawed_")
    return inject(plan, flaw, test_seed(spec.test_key, "flaw"), view)


class WorkflowSuite:
    """The workflow suite over one task library (satisfies `ultra.suites.Suite`)."""

    name = "workflow"
    difficulties: tuple[str, ...] = DIFFICULTIES
    prompt_types: tuple[str, ...] = PROMPT_TYPES
    # in WORKFLOW_METRICS' order (the projections' columns): means per test, each in [0, 1]
    metrics: tuple[Metric, ...] = (
        Metric(name="final_score", description="0.4 workflow + 0.4 phase2 + 0.2 quality"),
        Metric(name="workflow_score",
               description="0.4 tool coverage + 0.3 order + 0.3 execution success"),
        Metric(name="phase2_score",
               description="0.5 achievement + 0.3 workflow + 0.2 efficiency"),
        Metric(name="quality_score", description="1 less the penalties for flawed calls and help"),
    )

    def __init__(self, library: Library | None = None) -> None:
        self._library = library
        self._policies: Policies | None = None

    @property
    def library(self) -> Library:
        # Loaded on first use, once: importing the suite stays cheap.
        if self._library is None:
            self._library = default_library()
        return self._library

    @property
    def task_types(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.library.task_types

    def task_id(self, task_type: str, difficulty: str, index: int) -> str:
        return self.library.task_id(task_type, index)

    async def run(self, spec: TestSpec, model: ChatModel, *, max_turns: int = MAX_TURNS) -> TestResult:
        if spec.prompt_type not in PROMPT_TYPES:
            raise UserError(f"unknown prompt type {spec.prompt_type!r} (known: {', '.join(PROMPT_TYPES)})")
        view = self.library.view(spec.task_id)
        messages = initial_messages(view, spec.difficulty, spec.prompt_type, plan_for(self.library, spec))
        trajectory, _ = await execute(
            view,
            messages,
            model,
            tool_success_rate=spec.tool_success_rate,
            seed=test_seed(spec.test_key, "tools"),
            max_turns=max_turns,
        )
        result = score(trajectory)
        if hasattr(model, "scoring"):  # a model that keeps a transcript takes the breakdown
            model.scoring = dict(outcome=result.outcome, error_category=result.error_category,
                                 metrics=result.metrics, **breakdown(trajectory))
        return result

    def simulated_reply(
        self, skill: float, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> dict[str, Any] | None:
        if self._policies is None:
            self._policies = Policies(self.library)
        return self._policies.reply(skill, messages, tools)


SUITE = WorkflowSuite()


_LOADED: dict[tuple[str, int, int], WorkflowSuite] = {}


def load_suite(path: str | Path) -> WorkflowSuite:
    """The workflow suite over a team's own task library (format: data/tasks.schema.json);
    a malformed file raises `UserError` naming the task and the field. Loaded once per
    process while the file is unchanged."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return WorkflowSuite(load_library(p))  # raises the one-line error
    if key not in _LOADED:
        _LOADED[key] = WorkflowSuite(load_library(p))
    return _LOADED[key]
