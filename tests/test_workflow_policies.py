"""The simulated policies: the simulator's contract, replay from the test key, and
success that falls with skill (measured, not timed)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ultra.events import ERROR_CATEGORIES
from ultra.suites import TestResult, TestSpec
from ultra.suites.workflow import DIFFICULTIES, PROMPT_TYPES, SUITE, TASK_TYPES, plan_for, test_seed
from ultra.suites.workflow.executor import execute
from ultra.suites.workflow.policies import SimulatedModel
from ultra.suites.workflow.prompts import MARKER, initial_messages


def spec(i: int, prompt: str = "baseline", tsr: float = 0.8, key: str | None = None) -> TestSpec:
    tt, d = TASK_TYPES[i % 5], DIFFICULTIES[(i // 5) % 5]
    return TestSpec(test_key=key or f"t-{i}-{prompt}", suite="workflow", model="sim-x", prompt_type=prompt,
                    tool_success_rate=tsr, difficulty=d, task_type=tt, index=i, task_id=SUITE.task_id(tt, d, i))


def run_all(skill: float, specs: list[TestSpec]) -> list[TestResult]:
    model = SimulatedModel(SUITE, skill)

    async def go() -> list[TestResult]:
        return [await SUITE.run(s, model) for s in specs]

    return trio.run(go)


def test_reply_is_none_for_other_conversations() -> None:
    assert SUITE.simulated_reply(0.9, [{"role": "user", "content": "What is 2+2?"}], None) is None
    assert SUITE.simulated_reply(0.9, [], None) is None
    assert SUITE.simulated_reply(0.9, [{"role": "system", "content": "You are helpful."},
                                       {"role": "user", "content": "Task ID: simple_task_000"}], None) is None


def test_reply_is_an_openai_message_and_deterministic() -> None:
    view = SUITE.library.view(SUITE.task_id("data_pipeline", "easy", 4))
    msgs = initial_messages(view, "easy", "baseline", None)
    assert msgs[0]["content"].startswith(MARKER)
    r = SUITE.simulated_reply(1.0, msgs, view.schemas)
    assert r == SUITE.simulated_reply(1.0, msgs, view.schemas)
    assert r is not None and r["role"] == "assistant"
    (c,) = r["tool_calls"]
    assert c["type"] == "function" and c["function"]["name"] == view.task.required_tools[0]
    assert json.loads(c["function"]["arguments"]) == view.arguments[c["function"]["name"]]
    # without function calling (no tools in the request) the call comes as text
    t = SUITE.simulated_reply(1.0, msgs, None)
    assert t is not None and "tool_calls" not in t and t["content"].startswith(f"<tool_call>{view.task.required_tools[0]} ")
    # an unknown task (another library's) still gets an answer, not an exception
    other = [msgs[0], {"role": "user", "content": msgs[1]["content"].replace(view.task.id, "team_task_1")}]
    assert SUITE.simulated_reply(0.5, other, view.schemas) is not None


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=20), st.floats(0, 1), st.sampled_from([1.0, 0.8, 0.5]),
       st.sampled_from(PROMPT_TYPES), st.integers(0, 499))
def test_a_test_replays_identically_from_its_key(key: str, skill: float, tsr: float, prompt: str, i: int) -> None:
    s = spec(i, prompt, tsr, key)
    view = SUITE.library.view(s.task_id)

    async def once() -> tuple[Any, list[dict[str, Any]]]:
        msgs = initial_messages(view, s.difficulty, prompt, plan_for(SUITE.library, s))
        return await execute(view, msgs, SimulatedModel(SUITE, skill), tool_success_rate=tsr,
                             seed=test_seed(key, "tools"))

    first, second = trio.run(once), trio.run(once)
    assert first == second
    assert run_all(skill, [s]) == run_all(skill, [s])


def test_success_falls_as_skill_falls_and_every_category_occurs() -> None:
    specs = [spec(i, PROMPT_TYPES[i % len(PROMPT_TYPES)], tsr=0.7) for i in range(150)]
    rate = {}
    cats: Counter = Counter()
    outcomes: Counter = Counter()
    for skill in (0.95, 0.5, 0.1):
        results = run_all(skill, specs)
        rate[skill] = sum(r.outcome == "full_success" for r in results) / len(results)
        cats.update(r.error_category for r in results)
        outcomes.update(r.outcome for r in results)
    assert rate[0.95] > rate[0.5] + 0.15 > rate[0.1] + 0.3
    assert set(outcomes) == {"full_success", "partial_success", "failure"}
    assert set(ERROR_CATEGORIES) <= set(cats)


def test_success_falls_as_tool_success_rate_falls() -> None:
    full = {}
    for tsr in (1.0, 0.5):
        results = run_all(0.9, [spec(i, tsr=tsr) for i in range(100)])
        full[tsr] = sum(r.outcome == "full_success" for r in results)
    assert full[1.0] > full[0.5] + 20
