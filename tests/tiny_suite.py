"""A tiny second suite, as a team would write one: single-turn arithmetic.

It satisfies `ultra.suites.Suite` with nothing from the workflow suite, registers through
`ultra.suites.register`, and its `simulated_reply` lets the loopback simulator take it.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from ultra.suites import ChatModel, ContextLengthExceeded, Metric, TestResult, TestSpec

MARKER = "[tiny-arith v1]"
_QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class ArithSuite:
    name = "arith"
    task_types = ("addition",)
    difficulties = ("easy", "hard")
    prompt_types = ("plain",)
    metrics = (
        Metric(name="accuracy", description="1 if the answer is the sum"),
        Metric(name="answer_chars", description="characters in the answer"),
        Metric(name="off_by_one", aggregate="sum", description="answers one more than the sum"),
    )

    def task_id(self, task_type: str, difficulty: str, index: int) -> str:
        return f"{task_type}-{difficulty}-{index % 20}"

    def _operands(self, task_id: str) -> tuple[int, int]:
        rng = random.Random(_seed(task_id))
        hi = 10**6 if "-hard-" in task_id else 100
        return rng.randrange(hi), rng.randrange(hi)

    async def run(self, spec: TestSpec, model: ChatModel, *, max_turns: int = 10) -> TestResult:
        a, b = self._operands(spec.task_id)
        messages = [{"role": "system", "content": f"{MARKER} Answer with the number only."},
                    {"role": "user", "content": f"What is {a} + {b}?"}]
        try:
            resp = await model.complete(messages, None)
        except ContextLengthExceeded:
            return TestResult(outcome="failure", turns=1, error_category="other")
        answer = resp.text.strip()
        right = answer == str(a + b)
        return TestResult(
            outcome="full_success" if right else "failure",
            metrics={"accuracy": float(right), "answer_chars": float(len(answer)),
                     "off_by_one": float(answer == str(a + b + 1))},
            turns=1, error_category=None if right else "other",
        )

    def simulated_reply(self, skill: float, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        if not messages or not str(messages[0].get("content", "")).startswith(MARKER):
            return None
        m = _QUESTION.search(str(messages[-1].get("content", "")))
        if m is None:
            return None
        a, b = int(m.group(1)), int(m.group(2))
        right = random.Random(_seed(m.group(0))).random() < skill
        return {"role": "assistant", "content": str(a + b if right else a + b + 1)}


SUITE = ArithSuite()


def sim_responder(model: str, skill: float, messages: list[dict[str, Any]],
                  tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The simulator's responder for this suite (`SimConfig(responder="tests.tiny_suite:sim_responder")`)."""
    return SUITE.simulated_reply(skill, messages, tools) or {"role": "assistant", "content": "?"}


# Suites that declare their metrics wrongly (tests/test_suites.py): each is refused.
class _Twice(ArithSuite):
    metrics = (Metric(name="accuracy"), Metric(name="accuracy", aggregate="sum"))


class _Workflows(ArithSuite):
    metrics = (Metric(name="final_score", aggregate="sum"),)


class _LongName(ArithSuite):
    metrics = (Metric(name="x" * 65),)


class _NotMetrics(ArithSuite):
    metrics = ("accuracy",)


class _Taken(ArithSuite):
    metrics = (Metric(name="errors", aggregate="sum"),)  # total_errors: the error count's name


TWICE, WORKFLOWS, LONG_NAME, NOT_METRICS, TAKEN = (_Twice(), _Workflows(), _LongName(), _NotMetrics(),
                                                   _Taken())
