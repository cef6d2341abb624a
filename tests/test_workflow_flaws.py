"""Each flaw injection yields a plan that really has that flaw (checked by independent
oracles), deterministically from the seed; the optimal plan has none."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ultra.suites.workflow import SUITE, TASK_TYPES
from ultra.suites.workflow.flaws import FLAWS, Plan, inject, optimal_plan
from ultra.suites.workflow.library import TaskView
from ultra.suites.workflow.prompts import plan_of, render_plan
from ultra.suites.workflow.registry import argument_error


def _has(flaw: str, plan: Plan, view: TaskView) -> bool:
    req = list(view.task.required_tools)
    tools = [s.tool for s in plan.steps]
    good = optimal_plan(view)
    if flaw == "sequence_disorder":
        return sorted(tools) == sorted(req) and tools != req
    if flaw == "tool_misuse":
        diff = [(a, b) for a, b in zip(tools, req) if a != b]
        return len(tools) == len(req) and len(diff) == 1 and diff[0][0] not in req
    if flaw == "parameter_error":
        return tools == req and any(argument_error(view.tools[s.tool], s.arguments) for s in plan.steps)
    if flaw == "missing_step":
        it = iter(req)
        return len(tools) == len(req) - 1 and all(t in it for t in tools)
    if flaw == "redundant_operations":
        return len(tools) == len(req) + 1 and set(tools) == set(req)
    if flaw == "logical_inconsistency":
        return any(s.uses is not None and s.uses >= i for i, s in enumerate(plan.steps, 1))
    if flaw == "semantic_drift":
        dest = str(view.task.expected_outputs.get("destination"))
        return plan.steps == good.steps and plan.goal != good.goal and dest not in plan.goal
    raise AssertionError(flaw)


tasks = st.builds(lambda t, i: SUITE.library.view(SUITE.task_id(t, "easy", i)),
                  st.sampled_from(TASK_TYPES), st.integers(0, 99))


@settings(max_examples=300)
@given(tasks, st.sampled_from(FLAWS), st.integers(0, 2**64 - 1))
def test_injected_plan_has_exactly_that_flaw(view: TaskView, flaw: str, seed: int) -> None:
    plan = inject(optimal_plan(view), flaw, seed, view)
    assert _has(flaw, plan, view)
    assert inject(optimal_plan(view), flaw, seed, view) == plan  # deterministic
    # the plan survives the prompt: the simulator reads back what the model was shown
    assert plan_of("x\nPlan:\n" + render_plan(plan)) == list(plan.steps)


@given(tasks)
def test_optimal_plan_has_no_flaw(view: TaskView) -> None:
    plan = optimal_plan(view)
    assert not any(_has(f, plan, view) for f in FLAWS)
