"""Running one shard: its worker pool, pacer and HTTP client, one event per finished test.

Events go to `emit` (a non-blocking send into the process's group-commit writer), so a
slow disk never stalls a request. A test runs inside a trio cancel scope of
`test_timeout`; running out of it, or of retries, makes it `test.errored`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from ultra.client import HttpChatModel, ShardCounters, open_client
from ultra.events import (
    Event,
    ShardFinished,
    ShardStarted,
    TestCompleted,
    TestErrored,
    Usage,
    utc_now,
)
from ultra.limits import RateLimiter
from ultra.plan import Shard
from ultra.suites import ModelUnavailable, Suite, TestSpec


class ShardSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One shard's tallies at a moment: what a shard process reports to the parent."""

    shard: str
    planned: int
    completed: int = 0
    succeeded: int = 0  # full or partial success
    errored: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0  # 429s
    seconds: float = 0.0
    rate: float = 0.0  # the pacer's current rate (below the qps limit after 429s)
    min_rate: float = 0.0  # the lowest the pacer went
    finished: bool = False
    interrupted: bool = False

    @property
    def done(self) -> int:
        return self.completed + self.errored


class ShardProgress:
    """Live tallies of one shard (read by the progress reporter)."""

    __slots__ = ("shard_id", "planned", "completed", "succeeded", "errored", "counters",
                 "limiter", "started", "ended", "finished", "interrupted")

    def __init__(self, shard: Shard) -> None:
        self.shard_id = shard.shard_id
        self.planned = len(shard.tests)
        self.completed = 0
        self.succeeded = 0  # full or partial success
        self.errored = 0
        self.counters = ShardCounters()
        self.limiter = RateLimiter(shard.qps)
        self.started = time.monotonic()
        self.ended: float | None = None
        self.finished = False
        self.interrupted = False

    def snapshot(self) -> ShardSnapshot:
        c = self.counters
        return ShardSnapshot(
            shard=self.shard_id, planned=self.planned, completed=self.completed,
            succeeded=self.succeeded, errored=self.errored, requests=c.requests,
            retries=c.retries, throttled=c.throttled,
            seconds=round((self.ended or time.monotonic()) - self.started, 3),
            rate=round(self.limiter.rate, 3), min_rate=round(self.limiter.min_rate, 3),
            finished=self.finished, interrupted=self.interrupted,
        )


async def run_shard(shard: Shard, suite: Suite, run_id: str, emit: Callable[[Event], None],
                    progress: ShardProgress, shared: RateLimiter | None = None) -> None:
    """Run the shard's tests; `shared` is the key budget it shares with other shards."""
    emit(ShardStarted(
        run_id=run_id, shard_id=shard.shard_id, model=shard.model, instance=shard.instance,
        provider=shard.provider, strategy=shard.strategy, key_index=shard.key_index,
        deployment=shard.deployment, workers=shard.workers, qps=shard.qps,
        planned=len(shard.tests),
    ))
    finished = False
    try:
        if shard.tests:
            limiters = (progress.limiter, shared) if shared else (progress.limiter,)
            await _run_tests(shard, suite, run_id, emit, progress, limiters)
        finished = True
    finally:
        progress.ended = time.monotonic()
        progress.finished = True
        progress.interrupted = not finished
        emit(ShardFinished(
            run_id=run_id, shard_id=shard.shard_id, model=shard.model, instance=shard.instance,
            planned=progress.planned, completed=progress.completed, errored=progress.errored,
            interrupted=not finished,
        ))


async def _run_tests(shard: Shard, suite: Suite, run_id: str, emit: Callable[[Event], None],
                     progress: ShardProgress, limiters: tuple[RateLimiter, ...]) -> None:
    pending = iter(shard.tests)  # workers pull from one iterator: the pool never idles early
    async with open_client(shard.route, shard.workers) as client:

        async def worker() -> None:
            for spec in pending:
                model = HttpChatModel(
                    client, shard.route, limiters, progress.counters,
                    request_timeout=shard.request_timeout, max_retries=shard.max_retries,
                    rng=random.Random(spec.test_key),
                )
                emit(await _run_test(shard, suite, run_id, spec, model, progress))

        async with trio.open_nursery() as nursery:
            for _ in range(min(shard.workers, len(shard.tests))):
                nursery.start_soon(worker)


async def _run_test(shard: Shard, suite: Suite, run_id: str, spec: TestSpec,
                    model: HttpChatModel, progress: ShardProgress) -> Event:
    started_at = utc_now()
    t0 = time.perf_counter()
    common: dict[str, Any] = dict(
        run_id=run_id, shard_id=shard.shard_id, test_key=spec.test_key, suite=spec.suite,
        model=shard.model, instance=shard.instance, provider=shard.provider,
        simulated=shard.simulated, task_id=spec.task_id, task_type=spec.task_type,
        difficulty=spec.difficulty, prompt_type=spec.prompt_type,
        tool_success_rate=spec.tool_success_rate, started_at=started_at,
    )
    reason = message = None
    result = None
    with trio.move_on_after(shard.test_timeout):
        try:
            result = await suite.run(spec, model, max_turns=shard.max_turns)
        except ModelUnavailable as exc:
            reason, message = exc.reason, exc.message
        except Exception as exc:  # a suite bug must cost one test, not the run
            reason, message = "other", f"{type(exc).__name__}: {exc}"[:300]
    elapsed = time.perf_counter() - t0
    if result is None:
        progress.errored += 1
        if reason is None:
            reason, message = "timeout", f"test exceeded {shard.test_timeout:g}s"
        return TestErrored(**common, reason=reason, message=message or "",
                           retries=model.retries, execution_time=elapsed)
    progress.completed += 1
    if result.outcome != "failure":
        progress.succeeded += 1
    return TestCompleted(
        **common, result=result, retries=model.retries,
        execution_time=elapsed,
        usage=Usage(prompt_tokens=model.prompt_tokens, completion_tokens=model.completion_tokens),
    )
