"""The executor driven by scripted models: every outcome, every error category, text
calls, format help, and the two exceptions a ChatModel may raise."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio

from ultra.events import ERROR_CATEGORIES
from ultra.suites import ChatResponse, ContextLengthExceeded, ModelUnavailable, TestResult, TestSpec, ToolCall
from ultra.suites.workflow import SUITE
from ultra.suites.workflow.executor import Trajectory, execute, parse_text_calls
from ultra.suites.workflow.prompts import FORMAT_HELP, initial_messages
from ultra.suites.workflow.scoring import score

CHAIN = "basic_task_021"  # read_file -> parse_csv -> calculate_statistics, each needing the last
LOOSE = "basic_task_010"  # db_query -> sort_records -> write_file (write_file needs nothing)

Turn = ChatResponse | Callable[[list[dict[str, Any]]], ChatResponse]


class Scripted:
    """Answers from a script; the last entry repeats. Records what it was sent."""

    def __init__(self, *turns: Turn) -> None:
        self.turns = list(turns)
        self.seen: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = []

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> ChatResponse:
        self.seen.append((list(messages), tools))
        t = self.turns[min(len(self.seen) - 1, len(self.turns) - 1)]
        return t(messages) if callable(t) else t


def args(task_id: str, tool: str) -> dict[str, Any]:
    return SUITE.library.view(task_id).arguments[tool]


def call(task_id: str, tool: str, arguments: Any = None, n: int = 0) -> ChatResponse:
    a = json.dumps(args(task_id, tool) if arguments is None else arguments) if not isinstance(arguments, str) else arguments
    return ChatResponse(tool_calls=[ToolCall(id=f"c{n}_{tool}", name=tool, arguments=a)])


DONE = ChatResponse(content="All steps succeeded. TASK COMPLETE")


def run(model: Any, task_id: str = CHAIN, tsr: float = 1.0, prompt: str = "baseline", key: str = "k") -> tuple[TestResult, Trajectory]:
    view = SUITE.library.view(task_id)

    async def go() -> tuple[Trajectory, list[dict[str, Any]]]:
        return await execute(view, initial_messages(view, "easy", prompt, None), model, tool_success_rate=tsr, seed=7)

    traj, _ = trio.run(go)
    return score(traj), traj


def perfect(task_id: str) -> list[ChatResponse]:
    req = SUITE.library.tasks[task_id].required_tools
    return [*(call(task_id, t, n=i) for i, t in enumerate(req)), DONE]


def test_perfect_run_is_full_success_with_max_scores() -> None:
    model = Scripted(*perfect(CHAIN))
    r, t = run(model)
    assert r.outcome == "full_success" and r.error_category is None
    assert (r.metrics["workflow_score"], r.metrics["phase2_score"], r.metrics["quality_score"], r.metrics["final_score"], r.tool_coverage) == (1, 1, 1, 1, 1)
    assert (r.turns, r.tool_calls, r.required_tools, r.assisted_turns) == (4, 3, 3, 0)
    # the model is offered a subset of the registry, with the required tools in it
    tools = model.seen[0][1]
    assert tools is not None and 8 <= len(tools) <= 10
    # every native call got its tool message, in the OpenAI shape
    msgs = model.seen[-1][0]
    assert [m["role"] for m in msgs] == ["system", "user"] + ["assistant", "tool"] * 3
    assert msgs[3]["tool_call_id"] == "c0_read_file" and json.loads(msgs[3]["content"])["status"] == "success"


def test_text_calls_work_in_every_accepted_form() -> None:
    a0, a1, a2 = (json.dumps(args(CHAIN, t)) for t in ("read_file", "parse_csv", "calculate_statistics"))
    model = Scripted(
        ChatResponse(content=f"First I read.\n<tool_call>read_file {a0}</tool_call>"),
        ChatResponse(content=f'<tool_call>{{"name": "parse_csv", "arguments": {a1}}}</tool_call>'),
        ChatResponse(reasoning_content=f"<tool_call>calculate_statistics {a2}</tool_call>"),
        DONE,
    )
    r, t = run(model)
    assert r.outcome == "full_success" and all(c.text for c in t.calls)
    results = model.seen[-1][0][3]
    assert results["role"] == "user" and results["content"].startswith("<tool_result>")
    assert [(p.name, p.arguments) for p in parse_text_calls("<tool_call>log_event</tool_call>")] == [("log_event", {})]
    assert parse_text_calls("<tool_call>read_file {bad</tool_call>")[0].arguments is None
    assert parse_text_calls("<tool_call>read_file {")[0].arguments is None  # never closed


def test_sequence_order() -> None:
    r, _ = run(Scripted(call(LOOSE, "db_query"), call(LOOSE, "write_file"), call(LOOSE, "sort_records"), DONE), LOOSE)
    assert (r.outcome, r.error_category, r.tool_coverage) == ("partial_success", "sequence_order", 1.0)


def test_dependency() -> None:
    r, t = run(Scripted(call(CHAIN, "parse_csv"), call(CHAIN, "read_file"), call(CHAIN, "calculate_statistics"), DONE))
    assert t.calls[0].status == "dependency" and t.calls[2].status == "dependency"
    assert (r.outcome, r.error_category) == ("failure", "dependency")


def test_tool_selection_wrong_tool_and_skipped_step() -> None:
    view = SUITE.library.view(CHAIN)
    spare = next(n for n in view.offered if n not in view.task.required_tools)
    r, _ = run(Scripted(call(CHAIN, "read_file"), call(CHAIN, spare, args_for(spare)), DONE))
    assert r.error_category == "tool_selection" and r.outcome == "failure"
    r, _ = run(Scripted(call(CHAIN, "read_file"), call(CHAIN, "parse_csv"), DONE))
    assert (r.outcome, r.error_category) == ("partial_success", "tool_selection")
    r, t = run(Scripted(ChatResponse(tool_calls=[ToolCall(id="x", name="rm_rf", arguments="{}")]), DONE))
    assert t.calls[0].status == "unknown_tool" and r.error_category == "tool_selection"


def args_for(tool: str) -> dict[str, Any]:
    from ultra.suites.workflow.registry import example_arguments

    return example_arguments(SUITE.library.tools[tool], {}, {})


def test_parameter_config() -> None:
    r, t = run(Scripted(call(CHAIN, "read_file", {}), call(CHAIN, "read_file", {"path": 3}), DONE))
    assert [c.status for c in t.calls] == ["bad_arguments", "bad_arguments"]
    assert (r.outcome, r.error_category) == ("failure", "parameter_config")


def test_tool_call_format_gets_help_and_counts_assisted_turns() -> None:
    model = Scripted(call(CHAIN, "read_file", "{'path': oops"), ChatResponse(content="I will read the file now."), DONE)
    r, t = run(model)
    assert (r.outcome, r.error_category, r.assisted_turns) == ("failure", "tool_call_format", 2)
    assert t.calls[0].status == "malformed"
    assert model.seen[2][0][-1] == {"role": "user", "content": FORMAT_HELP}


def test_max_turns_when_the_model_never_finishes() -> None:
    r, t = run(Scripted(*perfect(CHAIN)[:3], call(CHAIN, "calculate_statistics", n=9)))
    assert (t.end, t.turns, r.outcome, r.error_category) == ("max_turns", 10, "partial_success", "max_turns")
    r, t = run(Scripted(call(CHAIN, "read_file")))  # never gets further
    assert (t.end, r.outcome, r.error_category) == ("max_turns", "failure", "max_turns")


def test_timeout_when_the_workflow_stalls() -> None:
    r, t = run(Scripted(call(CHAIN, "read_file")), tsr=0.0)
    assert (t.end, t.turns, r.outcome, r.error_category) == ("stalled", 3, "failure", "timeout")
    errors = {c.error for c in t.calls}
    assert errors <= set(SUITE.library.tools["read_file"].errors)


def test_other_when_giving_up_and_on_context_length() -> None:
    r, _ = run(Scripted(call(CHAIN, "read_file"), DONE), tsr=0.0)
    assert (r.outcome, r.error_category) == ("failure", "other")

    def too_long(messages: list[dict[str, Any]]) -> ChatResponse:
        raise ContextLengthExceeded("context_length_exceeded")

    r, t = run(Scripted(*perfect(CHAIN)[:2], too_long))
    assert (t.end, r.outcome, r.error_category, r.turns) == ("context_length", "failure", "other", 2)


def test_model_unavailable_propagates() -> None:
    def down(messages: list[dict[str, Any]]) -> ChatResponse:
        raise ModelUnavailable("rate_limited", "429 after 5 retries", retries=5)

    with pytest.raises(ModelUnavailable):
        run(Scripted(call(CHAIN, "read_file"), down))


def test_scripted_models_reach_every_outcome_and_category() -> None:
    """The union of the scenarios above, as one checkable statement."""
    view = SUITE.library.view(CHAIN)
    spare = next(n for n in view.offered if n not in view.task.required_tools)

    def ctx(_: Any) -> ChatResponse:
        raise ContextLengthExceeded()

    scenarios = [
        (Scripted(*perfect(CHAIN)), CHAIN, 1.0),
        (Scripted(call(CHAIN, "read_file", "{"), DONE), CHAIN, 1.0),
        (Scripted(call(CHAIN, "read_file", {}), DONE), CHAIN, 1.0),
        (Scripted(call(CHAIN, spare, args_for(spare)), DONE), CHAIN, 1.0),
        (Scripted(call(CHAIN, "parse_csv"), call(CHAIN, "read_file"), call(CHAIN, "calculate_statistics"), DONE), CHAIN, 1.0),
        (Scripted(call(LOOSE, "db_query"), call(LOOSE, "write_file"), call(LOOSE, "sort_records"), DONE), LOOSE, 1.0),
        (Scripted(call(CHAIN, "read_file")), CHAIN, 1.0),
        (Scripted(call(CHAIN, "read_file")), CHAIN, 0.0),
        (Scripted(ctx), CHAIN, 1.0),
    ]
    results = [run(m, task, tsr)[0] for m, task, tsr in scenarios]
    assert {r.outcome for r in results} == {"full_success", "partial_success", "failure"}
    assert {r.error_category for r in results} == {None, *ERROR_CATEGORIES}


def test_run_uses_the_spec_and_flawed_plans_reach_the_prompt() -> None:
    spec = TestSpec(test_key="key-1", suite="workflow", model="m", prompt_type="flawed_missing_step",
                    tool_success_rate=1.0, difficulty="hard", task_type="basic_task", index=21,
                    task_id=SUITE.task_id("basic_task", "hard", 21))
    model = Scripted(*perfect(CHAIN))
    r = trio.run(SUITE.run, spec, model)
    assert r.outcome == "full_success"
    prompt = model.seen[0][0][1]["content"]
    assert "Task ID: basic_task_021" in prompt and "\nPlan:\nGoal: " in prompt and "\n2. " in prompt and "\n3. " not in prompt
    assert SUITE.library.tasks[CHAIN].descriptions["hard"] in prompt
