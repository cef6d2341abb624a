"""The `ultra.suites` entry point: a team's suite registers and runs like the built-in one,
and suites do not answer each other's simulated conversations."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import ultra.suites
from tiny_suite import SUITE as ARITH
from ultra import events as ev
from ultra.errors import UserError
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


def test_a_suite_declares_its_metrics() -> None:
    """The built-in suite declares its four metrics as means (the projections' columns);
    the tiny suite two means and a sum."""
    assert [(m.name, m.aggregate) for m in WORKFLOW.metrics] == [(n, "mean") for n in ev.WORKFLOW_METRICS]
    assert [(m.name, m.aggregate, m.stat) for m in ARITH.metrics] == [
        ("accuracy", "mean", "avg_accuracy"), ("answer_chars", "mean", "avg_answer_chars"),
        ("off_by_one", "sum", "total_off_by_one")]


@pytest.mark.parametrize("ref, message", [
    ("TWICE", "declares metric 'accuracy' twice"),
    ("WORKFLOWS", "metric 'final_score' is the workflow suite's, a mean"),
    ("LONG_NAME", "Expected `str` of length <= 64"),
    ("NOT_METRICS", "a metric must be ultra.suites.Metric"),
    ("TAKEN", "metric 'errors' would be shown as 'total_errors', which the statistics already name"),
])
def test_bad_metric_declarations_are_one_line_errors(tmp_path, ref, message) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        get_suite(f"tiny_suite:{ref}")
    proc = subprocess.run([sys.executable, "-m", "ultra", "run", "--suite", f"tests.tiny_suite:{ref}",
                           "--db", str(tmp_path / "e.db")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "e.db").exists()
