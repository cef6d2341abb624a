"""The `ultra.suites` entry point: a team's suite registers and runs like the built-in one,
and suites do not answer each other's simulated conversations."""

from __future__ import annotations

import pytest
import trio

import ultra.suites
from tiny_suite import SUITE as ARITH
from ultra.suites import Suite, TestSpec, all_suites, get_suite, register
from ultra.suites.workflow import SUITE as WORKFLOW
from ultra.suites.workflow.policies import SimulatedModel
from ultra.suites.workflow.prompts import initial_messages


def _spec(suite: Suite, i: int) -> TestSpec:
    tt, d, p = suite.task_types[0], suite.difficulties[i % len(suite.difficulties)], suite.prompt_types[0]
    return TestSpec(test_key=f"{suite.name}-{i}", suite=suite.name, model="sim-x", prompt_type=p,
                    tool_success_rate=1.0, difficulty=d, task_type=tt, index=i, task_id=suite.task_id(tt, d, i))


@pytest.fixture(autouse=True)
def _clean_registry():
    # other tests (and the simulator) share the process-wide registry
    yield
    ultra.suites._REGISTRY.pop("arith", None)


def test_builtin_workflow_suite_is_registered() -> None:
    assert get_suite("workflow") is WORKFLOW
    assert isinstance(WORKFLOW, Suite)


def test_a_team_suite_registers_and_runs_through_the_same_interface() -> None:
    assert isinstance(ARITH, Suite)
    register(ARITH)
    assert get_suite("arith") is ARITH
    assert {"workflow", "arith"} <= set(all_suites())

    async def go(skill: float) -> list[str]:
        model = SimulatedModel(ARITH, skill)  # any suite's simulated_reply, in process
        return [(await ARITH.run(_spec(ARITH, i), model)).outcome for i in range(40)]

    assert set(trio.run(go, 1.0)) == {"full_success"}
    assert set(trio.run(go, 0.0)) == {"failure"}


def test_suites_answer_only_their_own_conversations() -> None:
    view = WORKFLOW.library.view(WORKFLOW.task_id("simple_task", "easy", 0))
    workflow_msgs = initial_messages(view, "easy", "baseline", None)
    arith_msgs = [{"role": "system", "content": "[tiny-arith v1] Answer with the number only."},
                  {"role": "user", "content": "What is 2 + 3?"}]
    assert ARITH.simulated_reply(1.0, workflow_msgs, view.schemas) is None
    assert WORKFLOW.simulated_reply(1.0, arith_msgs, None) is None
    assert ARITH.simulated_reply(1.0, arith_msgs, None) == {"role": "assistant", "content": "5"}
