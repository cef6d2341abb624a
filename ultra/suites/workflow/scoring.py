"""Scoring: pure functions from a `Trajectory` to the numbers of a `TestResult`.

Definitions (R = the task's required tools, in order; S = the required tools in the order
of their first successful call):

- tool coverage  = |S| / |R|
- order          = LCS(R, S) / |R|
- execution      = successful calls / calls (0 without calls)
- workflow score = 0.4 coverage + 0.3 order + 0.3 execution
- outcome        = full_success if coverage = order = 1 and the model stated completion;
                   partial_success if coverage >= 1/2; failure otherwise (and always
                   failure when the provider refused the conversation as too long)
- phase-2 score  = 0.5 achievement (1 / 0.5 / 0 by outcome) + 0.3 workflow
                   + 0.2 efficiency (|R| / calls, at most 1; 0 without calls)
- quality score  = 1 - 0.25 per malformed call - 0.2 per bad-argument call
                   - 0.15 per dependency violation - 0.15 per wrong-tool call
                   - 0.1 per redundant call - 0.1 per assisted turn, at least 0
- final score    = 0.4 workflow + 0.4 phase-2 + 0.2 quality

A perfect trajectory (each required tool called once, in order, successfully, then a
completion statement) scores full_success with every score 1.

Error category: exactly one for every test that is not a full success, the first rule
that matches (a test's worst mistake wins over its consequences: a skipped step makes the
next step's dependency fail, and that is still a selection error):

1. the conversation was refused as too long                         -> other
2. all required tools succeeded:
     in the wrong order                                              -> sequence_order
     never stated completion: ran out of turns / stalled            -> max_turns / timeout
3. some required tool never succeeded:
     a malformed call, or turns without any call                    -> tool_call_format
     a call with invalid arguments                                  -> parameter_config
     a call of a tool the task does not need, or a required tool never
       tried while calling a tool that needs it or stating completion
       (other than right after a tool error)                         -> tool_selection
     a call whose dependencies had not succeeded                    -> dependency
     stopped after consecutive failed turns                         -> timeout
     ran out of turns                                               -> max_turns
     otherwise (the model stated completion after a tool error)     -> other
"""

from __future__ import annotations

import msgspec

from ultra.suites import TestResult
from ultra.suites.workflow.executor import Trajectory

OUTCOMES = ("full_success", "partial_success", "failure")


class Counts(msgspec.Struct, frozen=True, kw_only=True):
    calls: int
    successes: int
    malformed: int
    bad_arguments: int
    dependency: int
    wrong_tool: int  # unknown tools and offered tools the task does not need
    redundant: int  # successful calls of a tool that had already succeeded


def lcs(a: tuple[str, ...] | list[str], b: tuple[str, ...] | list[str]) -> int:
    """Length of the longest common subsequence (O(|a||b|); both are a handful long)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def success_sequence(t: Trajectory) -> list[str]:
    """Required tools in the order of their first successful call."""
    req = set(t.required)
    seen: list[str] = []
    for c in t.calls:
        if c.status == "success" and c.name in req and c.name not in seen:
            seen.append(c.name)
    return seen


def counts(t: Trajectory) -> Counts:
    req = set(t.required)
    done: set[str] = set()
    redundant = wrong = 0
    for c in t.calls:
        if c.status == "success":
            if c.name in done:
                redundant += 1
            done.add(c.name)
        if c.status == "unknown_tool" or (c.name not in req and c.status != "malformed"):
            wrong += 1
    by = [c.status for c in t.calls]
    return Counts(
        calls=len(by),
        successes=by.count("success"),
        malformed=by.count("malformed"),
        bad_arguments=by.count("bad_arguments"),
        dependency=by.count("dependency"),
        wrong_tool=wrong,
        redundant=redundant,
    )


def tool_coverage(t: Trajectory) -> float:
    return len(success_sequence(t)) / len(t.required) if t.required else 1.0


def order_score(t: Trajectory) -> float:
    return lcs(t.required, success_sequence(t)) / len(t.required) if t.required else 1.0


def execution_success(c: Counts) -> float:
    return c.successes / c.calls if c.calls else 0.0


def workflow_score(t: Trajectory, c: Counts) -> float:
    return 0.4 * tool_coverage(t) + 0.3 * order_score(t) + 0.3 * execution_success(c)


def outcome(t: Trajectory) -> str:
    if t.end == "context_length":
        return "failure"
    cov = tool_coverage(t)
    if cov == 1.0 and order_score(t) == 1.0 and t.completed:
        return "full_success"
    return "partial_success" if cov >= 0.5 else "failure"


def phase2_score(t: Trajectory, c: Counts, result: str) -> float:
    achievement = {"full_success": 1.0, "partial_success": 0.5, "failure": 0.0}[result]
    efficiency = min(1.0, len(t.required) / c.calls) if c.calls else 0.0
    return 0.5 * achievement + 0.3 * workflow_score(t, c) + 0.2 * efficiency


def quality_score(t: Trajectory, c: Counts) -> float:
    penalty = (
        0.25 * c.malformed
        + 0.2 * c.bad_arguments
        + 0.15 * c.dependency
        + 0.15 * c.wrong_tool
        + 0.1 * c.redundant
        + 0.1 * t.assisted_turns
    )
    return max(0.0, 1.0 - penalty)


def error_category(t: Trajectory, c: Counts, result: str) -> str | None:
    """Exactly one of ERROR_CATEGORIES unless full success (rules in the module doc)."""
    if result == "full_success":
        return None
    if t.end == "context_length":
        return "other"
    done = success_sequence(t)
    if len(done) == len(t.required):
        if order_score(t) < 1.0:
            return "sequence_order"
        return "timeout" if t.end == "stalled" else "max_turns" if t.end == "max_turns" else "other"
    if c.malformed or t.idle_turns:
        return "tool_call_format"
    if c.bad_arguments:
        return "parameter_config"
    tried = {x.name for x in t.calls}
    untried = {r for r in t.required if r not in tried}
    needed = {n for x in t.calls for n in x.needs}
    # Stating completion right after a tool error is giving up (other), not skipping a step.
    gave_up = t.completed and bool(t.calls) and t.calls[-1].status == "failed"
    if c.wrong_tool or (untried and ((t.completed and not gave_up) or untried & needed)):
        return "tool_selection"
    if c.dependency:
        return "dependency"
    if t.end == "stalled":
        return "timeout"
    if t.end == "max_turns":
        return "max_turns"
    return "other"


def _r(x: float) -> float:
    return round(x, 6)  # stable, readable numbers in events and projections


def score(t: Trajectory) -> TestResult:
    c = counts(t)
    result = outcome(t)
    wf = workflow_score(t, c)
    p2 = phase2_score(t, c, result)
    q = quality_score(t, c)
    return TestResult(
        outcome=result,  # type: ignore[arg-type]
        metrics=dict(  # in the order the projections show them
            final_score=_r(0.4 * wf + 0.4 * p2 + 0.2 * q),
            workflow_score=_r(wf),
            phase2_score=_r(p2),
            quality_score=_r(q),
        ),
        turns=t.turns,
        tool_calls=c.calls,
        tool_coverage=_r(tool_coverage(t)),
        required_tools=len(t.required),
        error_category=error_category(t, c, result),  # type: ignore[arg-type]
        assisted_turns=t.assisted_turns,
    )


def breakdown(t: Trajectory) -> dict:
    """The scoring of a trajectory in parts, for the test's transcript: the components
    every score is made of, the counts, and each call with its status."""
    c = counts(t)
    return dict(
        end=t.end, completed=t.completed, required=list(t.required),
        success_sequence=success_sequence(t),
        tool_coverage=_r(tool_coverage(t)), order=_r(order_score(t)),
        execution=_r(execution_success(c)), counts=msgspec.structs.asdict(c),
        idle_turns=t.idle_turns, assisted_turns=t.assisted_turns,
        calls=[msgspec.structs.asdict(x) for x in t.calls],
    )


__all__ = ["breakdown", "Counts", "counts", "error_category", "execution_success", "lcs",
           "order_score", "outcome", "OUTCOMES", "phase2_score", "quality_score", "score",
           "success_sequence", "tool_coverage", "workflow_score"]
