"""Scoring invariants, over arbitrary trajectories (hypothesis)."""

from __future__ import annotations

from collections import Counter

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
