"""Plans and flaw injection: the step-by-step plan of `optimal`, and the seven ways a
`flawed_<type>` plan goes wrong. Pure: the same plan, flaw and seed give the same result
(the seed comes from the test key, so a test always sees the same flawed plan)."""

from __future__ import annotations

import random
from typing import Any

import msgspec

from ultra.suites.workflow.library import TaskView
from ultra.suites.workflow.registry import example_arguments, wrong_arguments

FLAWS: tuple[str, ...] = (
    "sequence_disorder",
    "tool_misuse",
    "parameter_error",
    "missing_step",
    "redundant_operations",
    "logical_inconsistency",
    "semantic_drift",
)


class PlanStep(msgspec.Struct, frozen=True, kw_only=True):
    tool: str
    arguments: dict[str, Any]
    uses: int | None = None  # 1-based number of the step whose output this step consumes


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    goal: str
    steps: tuple[PlanStep, ...]


def goal_of(view: TaskView) -> str:
    t = view.task
    src = t.inputs.get("source") or t.inputs.get("service") or "the inputs"
    dest = t.expected_outputs.get("destination", "the expected output")
    return f"deliver {dest} from {src}"


def _chain(tools: list[str], args: list[dict[str, Any]]) -> tuple[PlanStep, ...]:
    # Each step consumes the previous step's output: the plan reads as a pipeline.
    return tuple(PlanStep(tool=t, arguments=a, uses=i if i else None) for i, (t, a) in enumerate(zip(tools, args)))


def optimal_plan(view: TaskView) -> Plan:
    req = view.task.required_tools
    return Plan(goal=goal_of(view), steps=_chain(list(req), [view.arguments[n] for n in req]))


def inject(plan: Plan, flaw: str, seed: int, view: TaskView) -> Plan:
    """`plan` with exactly the given flaw, at a position drawn from `seed`."""
    rng = random.Random(seed)
    tools = [s.tool for s in plan.steps]
    args = [s.arguments for s in plan.steps]
    n = len(tools)
    if flaw == "sequence_disorder":
        if n < 2:  # nothing to reorder: the flaw degrades to a redundant step
            return inject(plan, "redundant_operations", seed, view)
        k = rng.randrange(n - 1)
        tools[k], tools[k + 1] = tools[k + 1], tools[k]
        args[k], args[k + 1] = args[k + 1], args[k]
        return Plan(goal=plan.goal, steps=_chain(tools, args))
    if flaw == "tool_misuse":
        k = rng.randrange(n)
        wrong = _substitute(tools[k], view, rng)
        tools[k] = wrong
        args[k] = example_arguments(view.tools[wrong], view.task.inputs, view.task.expected_outputs,
                                    first=k == 0, last=k == n - 1)
        return Plan(goal=plan.goal, steps=_chain(tools, args))
    if flaw == "parameter_error":
        k = rng.randrange(n)
        args[k] = wrong_arguments(view.tools[tools[k]], args[k])
        return Plan(goal=plan.goal, steps=_chain(tools, args))
    if flaw == "missing_step":
        if n < 2:
            return inject(plan, "tool_misuse", seed, view)
        k = rng.randrange(n)
        del tools[k], args[k]
        return Plan(goal=plan.goal, steps=_chain(tools, args))
    if flaw == "redundant_operations":
        k = rng.randrange(n)
        tools.insert(k + 1, tools[k])
        args.insert(k + 1, args[k])
        return Plan(goal=plan.goal, steps=_chain(tools, args))
    if flaw == "logical_inconsistency":
        # A step claims to consume the output of a step that has not run yet.
        if n < 2:
            return Plan(goal=plan.goal, steps=(PlanStep(tool=tools[0], arguments=args[0], uses=1),))
        k = rng.randrange(n - 1)
        steps = list(_chain(tools, args))
        steps[k] = PlanStep(tool=tools[k], arguments=args[k], uses=k + 2)
        return Plan(goal=plan.goal, steps=tuple(steps))
    if flaw == "semantic_drift":
        # The plan's goal wanders from the task: another deliverable, another target.
        drift = rng.choice(_DRIFTS)
        return Plan(goal=drift, steps=plan.steps)
    raise ValueError(f"unknown flaw {flaw!r}")


_DRIFTS = (
    "produce a marketing summary of last quarter and post it to the company blog",
    "clean up old log files on the build server",
    "draft a hiring plan for the data team",
    "benchmark the database against last year's hardware",
    "translate the user manual into French",
)


def _substitute(tool: str, view: TaskView, rng: random.Random) -> str:
    """An offered tool that the task does not need, preferably of the same category."""
    spare = [n for n in view.offered if n not in view.task.required_tools]
    same = [n for n in spare if view.tools[n].category == view.tools[tool].category]
    return rng.choice(same or spare)


__all__ = ["FLAWS", "goal_of", "inject", "optimal_plan", "Plan", "PlanStep"]
