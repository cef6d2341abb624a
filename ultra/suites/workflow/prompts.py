"""The conversation a test starts with, by prompt type. Pure functions of the task view,
the difficulty and the plan.

The system message starts with `MARKER`; the user message has a `Task ID: <id>` line and,
for `optimal` and `flawed_*`, a `Plan:` block with one `N. tool {json arguments}` line per
step. The simulated policies read these back (`task_id_of`, `plan_of`), so the format is
part of the suite's contract with the simulator.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ultra.suites.workflow.flaws import Plan, PlanStep
from ultra.suites.workflow.library import TaskView
from ultra.suites.workflow.registry import signature

MARKER = "[ultra-workflow v1]"
COMPLETION = "TASK COMPLETE"
BASE_PROMPT_TYPES: tuple[str, ...] = ("baseline", "optimal", "cot")

SYSTEM = (
    f"{MARKER} You are a workflow agent. Complete the task by calling the available tools, "
    "one step at a time, and use each tool's result before the next step. If a call fails, "
    "you may retry it. When every step has succeeded, reply with the line "
    f"'{COMPLETION}' and nothing else. If you cannot call functions natively, write each call "
    'as <tool_call>tool_name {"param": "value"}</tool_call>.'
)
COT = (
    "Before each call, think step by step: say briefly which step you are on and why this "
    "tool, then make the call."
)
FORMAT_HELP = (
    "No tool call was found in your reply. Call one of the available tools (function "
    'calling, or <tool_call>tool_name {"param": "value"}</tool_call>), or reply '
    f"'{COMPLETION}' if every step has succeeded."
)
USES = "  # uses output of step "


def render_plan(plan: Plan) -> str:
    lines = [f"Goal: {plan.goal}"]
    for i, s in enumerate(plan.steps, 1):
        note = f"{USES}{s.uses}" if s.uses is not None else ""
        lines.append(f"{i}. {s.tool} {json.dumps(s.arguments, separators=(', ', ': '))}{note}")
    return "\n".join(lines)


def user_prompt(view: TaskView, difficulty: str, prompt_type: str, plan: Plan | None) -> str:
    t = view.task
    parts = [
        f"Task ID: {t.id}",
        f"Task: {t.description(difficulty)}",
        f"Inputs: {json.dumps(t.inputs)}",
        f"Expected output: {json.dumps(t.expected_outputs)}",
        "Tools:\n" + "\n".join(f"- {signature(view.tools[n])}" for n in view.offered),
    ]
    if plan is not None:
        parts.append("Plan:\n" + render_plan(plan))
    if prompt_type == "cot":
        parts.append(COT)
    return "\n".join(parts)


def initial_messages(view: TaskView, difficulty: str, prompt_type: str, plan: Plan | None) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user_prompt(view, difficulty, prompt_type, plan)},
    ]


# ---- reading a prompt back (for the simulated policies) -------------------------------

_TASK_ID = re.compile(r"^Task ID: (\S+)$", re.M)
_STEP = re.compile(r"^(\d+)\. (\w+) (\{.*?\})(?:  # uses output of step (\d+))?$", re.M)


def is_ours(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and isinstance(messages[0].get("content"), str) and messages[0]["content"].startswith(MARKER)


def task_id_of(prompt: str) -> str | None:
    m = _TASK_ID.search(prompt)
    return m.group(1) if m else None


def plan_of(prompt: str) -> list[PlanStep] | None:
    at = prompt.find("\nPlan:\n")
    if at < 0:
        return None
    steps = []
    for m in _STEP.finditer(prompt, at):
        try:
            args = json.loads(m.group(3))
        except ValueError:
            args = {}
        steps.append(PlanStep(tool=m.group(2), arguments=args, uses=int(m.group(4)) if m.group(4) else None))
    return steps


__all__ = ["BASE_PROMPT_TYPES", "COMPLETION", "COT", "FORMAT_HELP", "initial_messages",
           "is_ours", "MARKER", "plan_of", "render_plan", "SYSTEM", "task_id_of", "user_prompt",
           "USES"]
