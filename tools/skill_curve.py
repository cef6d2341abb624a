"""Success rate of the simulated policies as skill falls and as tool_success_rate falls.

    .venv/bin/python tools/skill_curve.py [--tests 300]

Drives `SUITE.run` with an in-process model that calls `SUITE.simulated_reply` (no HTTP),
over the same tests for every setting (all task types, difficulties and prompt types).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ultra.events import ERROR_CATEGORIES  # noqa: E402
from ultra.suites import TestSpec  # noqa: E402
from ultra.suites.workflow import DIFFICULTIES, PROMPT_TYPES, SUITE, TASK_TYPES  # noqa: E402
from ultra.suites.workflow.policies import SimulatedModel  # noqa: E402


def specs(n: int, tsr: float) -> list[TestSpec]:
    out = []
    for i in range(n):
        tt, d, p = TASK_TYPES[i % 5], DIFFICULTIES[(i // 5) % 5], PROMPT_TYPES[(i // 25) % len(PROMPT_TYPES)]
        out.append(TestSpec(test_key=f"curve-{i}", suite="workflow", model="sim", prompt_type=p,
                            tool_success_rate=tsr, difficulty=d, task_type=tt, index=i,
                            task_id=SUITE.task_id(tt, d, i)))
    return out


async def measure(skill: float, tsr: float, n: int) -> tuple[Counter, Counter]:
    model = SimulatedModel(SUITE, skill)
    outcomes: Counter = Counter()
    cats: Counter = Counter()
    for spec in specs(n, tsr):
        r = await SUITE.run(spec, model)
        outcomes[r.outcome] += 1
        cats[r.error_category] += 1
    return outcomes, cats


def row(label: str, outcomes: Counter, cats: Counter, n: int) -> str:
    success = (outcomes["full_success"] + outcomes["partial_success"]) / n
    full = outcomes["full_success"] / n
    top = ", ".join(f"{c}={cats[c]}" for c in ERROR_CATEGORIES if cats[c])
    return f"{label:<22} full {full:5.1%}  success {success:5.1%}  | {top}"


async def main(n: int) -> None:
    t0 = time.perf_counter()
    runs = 0
    print(f"{n} tests per row (all task types x difficulties x prompt types)\n")
    print("skill falls (tool_success_rate 0.8):")
    for skill in (1.0, 0.9, 0.75, 0.55, 0.3, 0.0):
        o, c = await measure(skill, 0.8, n)
        runs += n
        print(row(f"  skill {skill:.2f}", o, c, n))
    print("\ntool_success_rate falls (skill 0.9):")
    for tsr in (1.0, 0.9, 0.8, 0.6, 0.4, 0.2):
        o, c = await measure(0.9, tsr, n)
        runs += n
        print(row(f"  tool_success {tsr:.1f}", o, c, n))
    dt = time.perf_counter() - t0
    print(f"\n{runs} tests in {dt:.1f} s: {runs / dt:.0f} tests/s in-process (executor + policy + scoring)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=300)
    trio.run(main, ap.parse_args().tests)
