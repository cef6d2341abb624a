"""Simulated models: deterministic policies of a given skill, for the loopback simulator.

A policy reads the task from the prompt (`Task ID:` line, looked up in the library: the
simulator knows the answer, its skill decides whether it gives it). From a hash of the
conversation's opening it draws once whether it solves the task (probability: the skill,
lowered by difficulty, raised by a plan, lowered by a flawed one) and, if not, which
mistake it makes; the same draw at every turn keeps one conversation consistent, and the
same draw across skills makes success monotone in skill. Its next move follows from the
tool results already in the conversation. Some conversations are answered with text calls
(`<tool_call>name {json}</tool_call>`), as models without function calling do.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import msgspec

from ultra.suites.workflow.flaws import optimal_plan
from ultra.suites.workflow.library import DIFFICULTIES, Library, TaskView
from ultra.suites.workflow.prompts import COMPLETION, is_ours, plan_of, render_plan, task_id_of
from ultra.suites.workflow.registry import example_arguments, missing_arguments

# Mistakes and their weights: every one leads to a different error category (or outcome).
MISTAKES: tuple[tuple[str, float], ...] = (
    ("wrong_tool", 2.0),  # tool_selection
    ("missing_step", 1.5),  # tool_selection
    ("wrong_order", 2.0),  # sequence_order, or dependency when the swapped steps depend
    ("bad_params", 2.0),  # parameter_config
    ("malformed", 1.5),  # tool_call_format
    ("chatter", 1.0),  # tool_call_format (talks instead of calling; stalls)
    ("never_finish", 1.5),  # max_turns
    ("gives_up", 0.5),  # other: states completion at the first tool error (harmless if none)
)
TEXT_STYLE_RATE = 0.15  # conversations answered with text calls
PERMANENT = frozenset({"UNKNOWN_TOOL", "INVALID_PARAMETERS", "DEPENDENCY_NOT_MET", "MALFORMED_CALL"})
_NEVER = 1 << 30
CHATTER = "Let me think about how to approach this before doing anything."


class Step(msgspec.Struct, frozen=True):
    tool: str
    arguments: dict[str, Any]
    malformed: bool = False


class Intent(msgspec.Struct, frozen=True):
    """What a policy means to do in one conversation (fixed at its first turn)."""

    steps: tuple[Step, ...]
    mistake: str | None  # None: solving
    text_style: bool
    cot: bool
    stop_at: int  # chatter: the step at which it stops calling tools


def _seed(*parts: str) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return int.from_bytes(h.digest(), "big")


def effective_skill(skill: float, difficulty_level: int, prompt: str) -> float:
    """The probability of solving: skill, lower when harder, higher with a plan."""
    p = max(0.0, min(1.0, skill)) ** (1 + 0.15 * difficulty_level)
    if prompt == "optimal":
        return p + 0.3 * p * (1 - p)
    if prompt == "cot":
        return p + 0.1 * p * (1 - p)
    if prompt == "flawed":
        return p * (0.85 + 0.15 * p)
    return p


def _pick(rng: random.Random) -> str:
    total = sum(w for _, w in MISTAKES)
    x = rng.random() * total
    for name, w in MISTAKES:
        x -= w
        if x < 0:
            return name
    return MISTAKES[-1][0]


def intent(view: TaskView | None, prompt: str, skill: float, tools: list[dict[str, Any]] | None,
           optimal_text: str | None) -> Intent:
    """The policy's plan for a conversation, from the prompt and the skill (pure)."""
    rng = random.Random(_seed(prompt))
    plan = plan_of(prompt)
    kind = "baseline"
    if plan is not None:
        kind = "optimal" if optimal_text is not None and optimal_text in prompt else "flawed"
    elif "think step by step" in prompt:
        kind = "cot"
    level = _difficulty_level(view, prompt)
    solve = rng.random() < effective_skill(skill, level, kind)
    mistake = None if solve else _pick(rng)
    text_style = rng.random() < TEXT_STYLE_RATE or not tools
    follow_plan = kind == "flawed" and not solve and rng.random() < 0.5
    at = rng.random()
    if view is None:  # a task this library does not know: follow the plan, else the offer
        steps = [Step(s.tool, s.arguments) for s in plan] if plan else [
            Step(t["function"]["name"], {}) for t in (tools or [])[:3]]
        return Intent(tuple(steps), mistake, text_style, kind == "cot", _NEVER)
    req = view.task.required_tools
    steps = [Step(n, view.arguments[n]) for n in req]
    n = len(steps)
    k = int(at * n)
    if follow_plan and plan:
        steps = [Step(s.tool, s.arguments) for s in plan]
        mistake = "follows_flawed_plan"
    elif mistake == "wrong_order" and n >= 2:
        k = min(k, n - 2)
        steps[k], steps[k + 1] = steps[k + 1], steps[k]
    elif mistake == "missing_step" and n >= 2:
        del steps[k]
    elif mistake in ("wrong_tool", "missing_step", "wrong_order"):
        spare = [t for t in view.offered if t not in req]
        if rng.random() < 0.2:  # now and then a tool that was never offered
            steps[k] = Step("run_script", {"command": "process"})
        else:
            wrong = spare[rng.randrange(len(spare))]
            steps[k] = Step(wrong, example_arguments(view.tools[wrong], view.task.inputs, view.task.expected_outputs))
    elif mistake == "bad_params":
        steps[k] = Step(steps[k].tool, missing_arguments(view.tools[steps[k].tool], steps[k].arguments))
    elif mistake == "malformed":
        steps[k] = Step(steps[k].tool, steps[k].arguments, malformed=True)
    return Intent(tuple(steps), mistake, text_style, kind == "cot", k if mistake == "chatter" else _NEVER)


def _difficulty_level(view: TaskView | None, prompt: str) -> int:
    if view is None:
        return 0
    for i, d in enumerate(DIFFICULTIES):
        if d in view.task.descriptions and f"\nTask: {view.task.descriptions[d]}\n" in prompt:
            return i
    return 0


def _results(messages: list[dict[str, Any]]) -> list[tuple[str, bool, str | None]]:
    """(tool, succeeded, error) for every tool result in the conversation, in order."""
    out = []
    for m in messages[2:]:
        role, content = m.get("role"), m.get("content")
        if not isinstance(content, str):
            continue
        if role == "tool":
            bodies = [content]
        elif role == "user" and "<tool_result>" in content:
            bodies = [b.split("</tool_result>")[0] for b in content.split("<tool_result>")[1:]]
        else:
            continue
        for b in bodies:
            try:
                r = json.loads(b)
            except ValueError:
                continue
            out.append((str(r.get("tool", "")), r.get("status") == "success", r.get("error")))
    return out


def next_move(it: Intent, results: list[tuple[str, bool, str | None]]) -> tuple[str, Step | None]:
    """("call", step) | ("complete", None) | ("chatter", None): the policy's next action."""
    i = attempts = 0
    steps = it.steps
    for tool, ok, err in results:
        if i >= len(steps) or tool != steps[i].tool:
            continue  # a result of a step already given up on, or of another step
        if ok:
            i, attempts = i + 1, 0
            continue
        if it.mistake == "gives_up" and err not in PERMANENT:
            return "complete", None
        attempts += 1
        # Transient tool errors are retried; an error that will only repeat, not for long.
        if attempts >= (2 if err in PERMANENT else 3):
            i, attempts = i + 1, 0
    if i >= it.stop_at:
        return "chatter", None
    if i < len(steps):
        return "call", steps[i]
    if it.mistake == "never_finish" and steps:
        return "call", steps[-1]  # keeps re-checking instead of stating completion
    return "complete", None


def render(it: Intent, move: str, step: Step | None, turn: int) -> dict[str, Any]:
    """The OpenAI assistant message for a move."""
    if move == "complete":
        return {"role": "assistant", "content": COMPLETION}
    if move == "chatter" or step is None:
        return {"role": "assistant", "content": CHATTER}
    args = json.dumps(step.arguments)
    if step.malformed:
        args = args[:-2] if len(args) > 2 else "{"  # cut short: not JSON any more
    lead = f"Step {turn}: {step.tool} is next." if it.cot else None
    if it.text_style:
        call = f"<tool_call>{step.tool} {args}</tool_call>"
        return {"role": "assistant", "content": f"{lead}\n{call}" if lead else call}
    return {
        "role": "assistant",
        "content": lead,
        "tool_calls": [{"id": f"call_{turn}", "type": "function",
                        "function": {"name": step.tool, "arguments": args}}],
    }


class Policies:
    """`simulated_reply` over one library, with the per-task look-ups cached."""

    def __init__(self, library: Library) -> None:
        self.library = library
        self._optimal: dict[str, str] = {}

    def _optimal_text(self, view: TaskView) -> str:
        text = self._optimal.get(view.task.id)
        if text is None:
            text = self._optimal[view.task.id] = "\nPlan:\n" + render_plan(optimal_plan(view)) + "\n"
        return text

    def reply(self, skill: float, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        if not is_ours(messages) or len(messages) < 2:
            return None
        prompt = messages[1].get("content") or ""
        tid = task_id_of(prompt)
        view = self.library.view(tid) if tid in self.library.tasks else None
        optimal = self._optimal_text(view) if view is not None else None
        it = intent(view, prompt if prompt.endswith("\n") else prompt + "\n", skill, tools, optimal)
        move, step = next_move(it, _results(messages))
        turn = 1 + sum(1 for m in messages if m.get("role") == "assistant")
        return render(it, move, step, turn)


class SimulatedModel:
    """An in-process `ChatModel` answering with a suite's `simulated_reply` (no HTTP):
    for tests and tools/skill_curve.py."""

    def __init__(self, suite: Any, skill: float) -> None:
        self.suite = suite
        self.skill = skill

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Any:
        from ultra.suites import ChatResponse, ToolCall

        d = self.suite.simulated_reply(self.skill, messages, tools)
        if d is None:
            raise ValueError("not a conversation of this suite")
        calls = [ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
                 for c in d.get("tool_calls") or []]
        return ChatResponse(content=d.get("content"), tool_calls=calls, finish_reason="tool_calls" if calls else "stop")


__all__ = ["CHATTER", "effective_skill", "Intent", "intent", "MISTAKES", "next_move",
           "PERMANENT", "Policies", "render", "SimulatedModel", "Step", "TEXT_STYLE_RATE"]
