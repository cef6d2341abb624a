"""Running one shard: its worker pool, pacers and HTTP client, one event per finished test.

Events go to `emit` (a non-blocking send into the process's group-commit writer), so a
slow disk never stalls a request. A test runs inside a trio cancel scope of
`test_timeout`; running out of it, or of retries, makes it `test.errored`. A route that
answers `broken_after` times in a row with a non-retryable refusal (or cannot be reached
once retries are spent) is broken: its shard takes no more tests, the others go on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from ultra.collect.client import (
    HttpChatModel,
    RouteClient,
    RouteHealth,
    ShardCounters,
    open_clients,
)
from ultra.collect.secrets import resolve_secret
from ultra.events import (
    Event,
    Prices,
    ShardFinished,
    ShardStarted,
    TestCompleted,
    TestErrored,
    utc_now,
)
from ultra.defaults import CLAIM_BATCH
from ultra.collect.leases import ClaimedTests, ProcessLeases
from ultra.collect.limits import Concurrency, RateLimiter, TokenBudget
from ultra.collect.plan import Shard
from ultra.suites import ModelUnavailable, Suite, TestSpec


MAX_ERROR_GROUPS = 20  # distinct (reason, status, message) kept per shard for the summary
PAUSE_SHOWN = 3.0  # seconds: a hold the server imposed that lasts longer shows in the progress


class ErrorGroup(msgspec.Struct, frozen=True, kw_only=True):
    """Errored tests of one shard with one reason, HTTP status and server message."""

    reason: str
    http_status: int | None
    message: str
    count: int


class KeyBudget:
    """The budgets of one API key that several shards share (`key_qps`, `key_tpm`)."""

    __slots__ = ("limiter", "tokens")

    def __init__(self, qps: float | None, tpm: float | None) -> None:
        self.limiter = RateLimiter(qps) if qps else None
        self.tokens = TokenBudget(tpm) if tpm else None


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
    workers: int = 0
    window: int = 0  # requests allowed in flight now (below workers after timeouts)
    min_window: int = 0  # the lowest it went
    finished: bool = False
    interrupted: bool = False
    broken: str | None = None  # why the route broke: "HTTP 401: <server message>"
    errors: list[ErrorGroup] = []
    prompt_tokens: int = 0  # every request of the shard, errored tests' too
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    not_taken: int = 0  # held by another run (see held_by) when this shard gave up on them
    elsewhere: int = 0  # completed by another collector after this run's plan
    held_by: tuple[str, ...] = ()  # run ids holding this shard's route or its not-taken tests
    fenced: int = 0  # tests whose events were dropped: this run lost their claims (stalled)
    unstored: int = 0  # results the log failed to store (counted neither completed nor errored)
    store_failed: str | None = None  # the storage error that stopped the shard's process
    # Wall-clock epoch seconds until which the server holds the shard back (a 429's
    # Retry-After, a limit's reset, the spacing of a limit without reset); None: it does not.
    paused_until: float | None = None

    @property
    def done(self) -> int:
        return self.completed + self.errored


class ShardProgress:
    """Live tallies of one shard (read by the progress reporter)."""

    __slots__ = ("shard_id", "planned", "completed", "succeeded", "errored", "counters",
                 "limiter", "budget", "health", "errors", "started", "ended", "finished",
                 "interrupted", "not_taken", "elsewhere", "held_by", "fenced", "window",
                 "unstored", "store_failed")

    def __init__(self, shard: Shard) -> None:
        self.shard_id = shard.shard_id
        self.planned = len(shard.tests)
        self.completed = 0
        self.succeeded = 0  # full or partial success
        self.errored = 0
        self.counters = ShardCounters()
        self.limiter = RateLimiter(shard.qps)
        self.budget = TokenBudget(shard.tpm) if shard.tpm else None
        self.health = RouteHealth(shard.broken_after, quiet=shard.broken_after * shard.request_timeout)
        self.window = Concurrency(shard.workers)
        self.errors: dict[tuple[str, int | None, str], int] = {}
        self.started = time.monotonic()
        self.ended: float | None = None
        self.finished = False
        self.interrupted = False
        self.not_taken = 0
        self.elsewhere = 0
        self.held_by: set[str] = set()
        self.fenced = 0
        self.unstored = 0
        self.store_failed: str | None = None

    def snapshot(self) -> ShardSnapshot:
        c = self.counters
        held = 0.0 if self.finished else self.limiter.held_for()
        return ShardSnapshot(
            shard=self.shard_id, planned=self.planned, completed=self.completed,
            succeeded=self.succeeded, errored=self.errored, requests=c.requests,
            retries=c.retries, throttled=c.throttled,
            seconds=round((self.ended or time.monotonic()) - self.started, 3),
            rate=round(self.limiter.rate, 3), min_rate=round(self.limiter.min_rate, 3),
            workers=self.window.workers, window=self.window.slots, min_window=self.window.low,
            finished=self.finished, interrupted=self.interrupted, broken=self.health.broken,
            errors=[ErrorGroup(reason=r, http_status=st, message=m, count=n)
                    for (r, st, m), n in self.errors.items()],
            prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
            reasoning_tokens=c.reasoning_tokens,
            not_taken=self.not_taken, elsewhere=self.elsewhere, held_by=tuple(sorted(self.held_by)),
            fenced=self.fenced, unstored=self.unstored, store_failed=self.store_failed,
            paused_until=round(time.time() + held, 1) if held >= PAUSE_SHOWN else None,
        )

    def record_error(self, reason: str, http_status: int | None, message: str) -> None:
        key = (reason, http_status, message)
        if key not in self.errors and len(self.errors) >= MAX_ERROR_GROUPS:
            key = (reason, http_status, "(other messages)")
        self.errors[key] = self.errors.get(key, 0) + 1


async def run_shard(shard: Shard, suite: Suite, run_id: str, emit: Callable[[Event], None],
                    progress: ShardProgress, shared: KeyBudget | None = None,
                    leases: ProcessLeases | None = None, transcripts: str = "none") -> None:
    """Run the shard's tests; `shared` is the key budget it shares with other shards;
    `leases`: hold the route and claim each test in the store (many collectors, one log);
    `transcripts`: all | failures | none, the tests whose transcript is stored (a test's
    event is then emitted as `(event, (digest, compressed bytes))`)."""
    emit(ShardStarted(
        run_id=run_id, shard_id=shard.shard_id, model=shard.model, instance=shard.instance,
        provider=shard.provider, strategy=shard.strategy, key_index=shard.key_index,
        deployment=shard.deployment, workers=shard.workers, qps=shard.qps,
        planned=len(shard.tests),
        prices=Prices(input=shard.prices[0], output=shard.prices[1]) if shard.prices else None,
    ))
    finished = False
    try:
        if shard.tests and (leases is None or await leases.hold_route(shard, progress)):
            try:
                await _run_tests(shard, suite, run_id, emit, progress, shared, leases,
                                 transcripts)
            finally:
                if leases is not None:
                    await leases.drop_route(shard)
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
                     progress: ShardProgress, shared: KeyBudget | None,
                     leases: ProcessLeases | None = None, transcripts: str = "none") -> None:
    # one queue: the pool never idles early; claims in batches of at most the worker count
    pending = ClaimedTests(shard.tests.specs(suite), leases, progress,
                           batch=min(CLAIM_BATCH, shard.workers))
    limiters = tuple(x for x in (progress.limiter, shared and shared.limiter) if x)
    budgets = tuple(x for x in (progress.budget, shared and shared.tokens) if x)
    health = progress.health
    secrets = (resolve_secret(shard.route),)  # only to redact it from server messages
    async with open_clients(shard.route, shard.workers) as clients:

        async def worker(client: RouteClient) -> None:
            while (spec := await pending.next()) is not None:
                if health.broken:
                    return  # a broken route takes no more tests; the next run retakes them
                model = HttpChatModel(
                    client, shard.route, limiters, progress.counters,
                    request_timeout=shard.request_timeout, max_retries=shard.max_retries,
                    rng=random.Random(spec.test_key), options=shard.options, budgets=budgets,
                    health=health, secrets=secrets, concurrency=progress.window,
                )
                await _run_test(shard, suite, run_id, spec, model, progress, emit, transcripts)

        try:
            async with trio.open_nursery() as nursery:
                for i in range(min(shard.workers, len(shard.tests))):
                    nursery.start_soon(worker, clients[i % len(clients)])
        finally:
            await pending.close()


async def _run_test(shard: Shard, suite: Suite, run_id: str, spec: TestSpec,
                    model: HttpChatModel, progress: ShardProgress,
                    emit: Callable[[Event], None], transcripts: str = "none") -> None:
    """Run one test and emit its event. A test the run's interruption cancels emits a
    `test.errored` (cancelled) when its answers cost tokens, so none goes uncounted."""
    if transcripts != "none":
        emit = _with_transcript(emit, spec, shard, model, transcripts)
    started_at = utc_now()
    t0 = time.perf_counter()
    common: dict[str, Any] = dict(
        run_id=run_id, shard_id=shard.shard_id, test_key=spec.test_key, suite=spec.suite,
        model=shard.model, instance=shard.instance, provider=shard.provider,
        task_id=spec.task_id, task_type=spec.task_type,
        difficulty=spec.difficulty, prompt_type=spec.prompt_type,
        tool_success_rate=spec.tool_success_rate, started_at=started_at,
        condition=shard.condition,
    )
    reason = message = None
    http_status: int | None = None
    result = None
    try:
        with trio.move_on_after(shard.test_timeout):
            try:
                result = await suite.run(spec, model, max_turns=shard.max_turns)
            except ModelUnavailable as exc:
                reason, message, http_status = exc.reason, exc.message, exc.http_status
            except Exception as exc:  # a suite bug must cost one test, not the run
                reason, message = "other", f"{type(exc).__name__}: {exc}"[:200]
    except trio.Cancelled:
        if model.prompt_tokens or model.completion_tokens:
            reason, message = "cancelled", "the run was interrupted"
            emit(_errored(common, shard, model, progress, t0, reason, message, None))
        raise
    if result is None:
        if reason is None:
            reason, message = "timeout", f"test exceeded {shard.test_timeout:g}s"
        if reason == "connection":  # unreachable once retries are spent: counts as a refusal
            progress.health.refused(message or "cannot reach the server")
        emit(_errored(common, shard, model, progress, t0, reason, message or "", http_status))
        return
    elapsed = time.perf_counter() - t0
    # The server's mark says whether this was the simulator, whatever the provider kind.
    common["simulated"] = model.simulated
    progress.completed += 1
    if result.outcome != "failure":
        progress.succeeded += 1
    if model.finish_reasons:
        result = msgspec.structs.replace(result, finish_reasons=model.finish_reasons)
    emit(TestCompleted(**common, result=result, retries=model.retries, execution_time=elapsed,
                       usage=model.usage))


def _errored(common: dict[str, Any], shard: Shard, model: HttpChatModel,
             progress: ShardProgress, t0: float, reason: str, message: str,
             http_status: int | None) -> TestErrored:
    common["simulated"] = model.simulated
    progress.errored += 1
    progress.record_error(reason, http_status, message)
    return TestErrored(**common, reason=reason, message=message, http_status=http_status,  # type: ignore[arg-type]
                       retries=model.retries, execution_time=time.perf_counter() - t0,
                       usage=model.usage)


def _with_transcript(emit: Callable[[Any], None], spec: TestSpec, shard: Shard,
                     model: HttpChatModel, mode: str) -> Callable[[Event], None]:
    """`emit` for one test's event: with the test's transcript (built once, here) when
    `mode` wants it, as `(event carrying the digest, (digest, compressed bytes))`."""
    from ultra import transcripts as tr

    def send(event: Event) -> None:
        errored = isinstance(event, TestErrored)
        failed = errored or (isinstance(event, TestCompleted)
                             and event.result.outcome != "full_success")
        if not isinstance(event, (TestCompleted, TestErrored)) or not tr.wanted(mode, failed):
            emit(event)
            return
        error = (dict(reason=event.reason, http_status=event.http_status, message=event.message)
                 if isinstance(event, TestErrored) else None)
        digest, blob = tr.pack(tr.build(test_key=spec.test_key, suite=spec.suite,
                                        model=shard.model, instance=shard.instance,
                                        chat=model, error=error), model._secrets)
        emit((msgspec.structs.replace(event, transcript=digest), (digest, blob)))

    return send


__all__ = ["ErrorGroup", "KeyBudget", "MAX_ERROR_GROUPS", "PAUSE_SHOWN", "run_shard",
           "ShardProgress", "ShardSnapshot"]
