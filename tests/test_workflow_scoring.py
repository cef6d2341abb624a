"""Scoring invariants, over arbitrary trajectories (hypothesis)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultra.events import ERROR_CATEGORIES
from ultra.suites.workflow.executor import Call, Trajectory
from ultra.suites.workflow.scoring import OUTCOMES, lcs, score

NAMES = ["a", "b", "c", "d", "e", "f", "g"]
STATUSES = ["success", "failed", "malformed", "unknown_tool", "bad_arguments", "dependency"]
ENDS = ["completed", "max_turns", "stalled", "context_length"]


@st.composite
def trajectories(draw: st.DrawFn) -> Trajectory:
    required = tuple(draw(st.lists(st.sampled_from(NAMES[:5]), min_size=1, max_size=5, unique=True)))
    calls = draw(st.lists(st.builds(
        Call,
        turn=st.integers(1, 10),
        name=st.sampled_from(NAMES + [""]),
        status=st.sampled_from(STATUSES),
        needs=st.lists(st.sampled_from(NAMES), max_size=2).map(tuple),
    ), max_size=12))
    end = draw(st.sampled_from(ENDS))
    turns = draw(st.integers(0, 10))
    return Trajectory(
        required=required, calls=tuple(calls), turns=turns,
        assisted_turns=draw(st.integers(0, turns)), idle_turns=draw(st.integers(0, turns)),
        completed=end == "completed", end=end,
    )


@st.composite
def perfect(draw: st.DrawFn) -> Trajectory:
    required = tuple(draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=7, unique=True)))
    calls = tuple(Call(turn=i + 1, name=n, status="success", text=draw(st.booleans())) for i, n in enumerate(required))
    return Trajectory(required=required, calls=calls, turns=len(calls) + 1, completed=True, end="completed")


@given(perfect())
def test_perfect_trajectory_scores_full_success_at_max(t: Trajectory) -> None:
    r = score(t)
    assert r.outcome == "full_success" and r.error_category is None
    assert r.metrics["workflow_score"] == r.metrics["phase2_score"] == r.metrics["quality_score"] == r.metrics["final_score"] == r.tool_coverage == 1.0
    assert r.tool_calls == r.required_tools == len(t.required) and r.assisted_turns == 0


@given(trajectories())
def test_every_non_full_success_has_exactly_one_category(t: Trajectory) -> None:
    r = score(t)
    assert r.outcome in OUTCOMES
    assert (r.error_category is None) == (r.outcome == "full_success")
    assert r.error_category is None or r.error_category in ERROR_CATEGORIES
    for x in (r.metrics["workflow_score"], r.metrics["phase2_score"], r.metrics["quality_score"], r.metrics["final_score"], r.tool_coverage):
        assert 0.0 <= x <= 1.0
    assert score(t) == r  # pure


@given(trajectories())
def test_only_a_perfect_run_reaches_the_maximum(t: Trajectory) -> None:
    r = score(t)
    if r.outcome != "full_success":
        assert r.metrics["final_score"] < 1.0 and r.metrics["phase2_score"] <= 0.8


@settings(max_examples=50)
@given(st.lists(trajectories(), max_size=30))
def test_categories_of_a_group_sum_to_its_errors(group: list[Trajectory]) -> None:
    results = [score(t) for t in group]
    by_cat = Counter(r.error_category for r in results if r.error_category is not None)
    errors = sum(1 for r in results if r.outcome != "full_success")
    assert sum(by_cat.values()) == errors
    assert sum(by_cat[c] for c in ERROR_CATEGORIES) == errors


@given(st.lists(st.sampled_from("abcd")), st.lists(st.sampled_from("abcd")))
def test_lcs_bounds(a: list[str], b: list[str]) -> None:
    n = lcs(a, b)
    assert 0 <= n <= min(len(a), len(b)) and lcs(a, a) == len(a) and lcs(a, b) == lcs(b, a)


# ---- hand-scored trajectories: the weights, the thresholds and the categories, pinned ----
#
# Each row was scored by hand from the formulas in ultra/suites/workflow/scoring.py:
#   workflow = .4 coverage + .3 order + .3 execution;  phase2 = .5 achievement + .3 workflow
#   + .2 efficiency;  quality = 1 - .25 malformed - .2 bad args - .15 dependency - .15 wrong
#   tool - .1 redundant - .1 assisted (>= 0);  final = .4 workflow + .4 phase2 + .2 quality.


def _c(name: str, status: str = "success", turn: int = 1, needs: tuple[str, ...] = ()) -> Call:
    return Call(turn=turn, name=name, status=status, needs=needs)  # type: ignore[arg-type]


def _t(required: str, calls: list[Call], end: str = "completed", **kw) -> Trajectory:
    return Trajectory(required=tuple(required), calls=tuple(calls), end=end,  # type: ignore[arg-type]
                      completed=kw.pop("completed", end == "completed"), **kw)


HAND_SCORED = [
    # name, trajectory, outcome, category, workflow, phase2, quality, final, coverage
    ("perfect", _t("abc", [_c("a"), _c("b"), _c("c")]),
     "full_success", None, 1.0, 1.0, 1.0, 1.0, 1.0),
    ("half the tools: partial at the threshold", _t("abcd", [_c("a"), _c("b")], "max_turns"),
     "partial_success", "max_turns", 0.65, 0.645, 1.0, 0.718, 0.5),
    ("a third of the tools: failure below it", _t("abc", [_c("a")], "stalled"),
     "failure", "timeout", 0.533333, 0.36, 1.0, 0.557333, 0.333333),
    ("all tools, wrong order", _t("abc", [_c("b"), _c("a"), _c("c")]),
     "partial_success", "sequence_order", 0.9, 0.72, 1.0, 0.848, 1.0),
    ("every penalty once", _t("ab", [_c("a", "malformed"), _c("a"), _c("x"), _c("a"),
                                     _c("b", "bad_arguments"), _c("b")], assisted_turns=1),
     "full_success", None, 0.9, 0.836667, 0.2, 0.734667, 1.0),
    ("quality floors at zero", _t("a", [_c("a", "malformed")] * 5, "max_turns"),
     "failure", "tool_call_format", 0.0, 0.04, 0.0, 0.016, 0.0),
    ("refused as too long", _t("ab", [_c("a"), _c("b")], "context_length"),
     "failure", "other", 1.0, 0.5, 1.0, 0.8, 1.0),
    ("a dependency not met", _t("ab", [_c("a", "failed"), _c("b", "dependency", needs=("a",))], "max_turns"),
     "failure", "dependency", 0.0, 0.2, 0.85, 0.25, 0.0),
    ("bad arguments", _t("a", [_c("a", "bad_arguments")], "stalled"),
     "failure", "parameter_config", 0.0, 0.2, 0.8, 0.24, 0.0),
    ("a tool the task does not need", _t("ab", [_c("a"), _c("z")], "max_turns"),
     "partial_success", "tool_selection", 0.65, 0.645, 0.85, 0.688, 0.5),
    ("turns without a call", _t("a", [], "stalled", idle_turns=2, turns=2),
     "failure", "tool_call_format", 0.0, 0.0, 1.0, 0.2, 0.0),
    ("completion stated after a tool error", _t("ab", [_c("a"), _c("b", "failed")]),
     "partial_success", "other", 0.5, 0.6, 1.0, 0.64, 0.5),
    ("all tools, no completion, stalled", _t("a", [_c("a")], "stalled"),
     "partial_success", "timeout", 1.0, 0.75, 1.0, 0.9, 1.0),
    ("all tools, no completion, out of turns", _t("a", [_c("a")], "max_turns"),
     "partial_success", "max_turns", 1.0, 0.75, 1.0, 0.9, 1.0),
    ("a step skipped, completion stated", _t("abc", [_c("a"), _c("c")]),
     "partial_success", "tool_selection", 0.766667, 0.68, 1.0, 0.778667, 0.666667),
]


@pytest.mark.parametrize("row", HAND_SCORED, ids=[r[0] for r in HAND_SCORED])
def test_hand_scored_trajectories(row) -> None:
    _, t, outcome, category, wf, p2, q, final, coverage = row
    r = score(t)
    assert (r.outcome, r.error_category) == (outcome, category)
    m = r.metrics
    got = (m["workflow_score"], m["phase2_score"], m["quality_score"], m["final_score"], r.tool_coverage)
    assert got == pytest.approx((wf, p2, q, final, coverage), abs=1e-6)
