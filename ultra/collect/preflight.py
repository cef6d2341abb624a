"""Preflight: one cheap request per route before a run, to tell a dead route at once and
measure the latency `ultra run` sizes its processes by."""

from __future__ import annotations

import random

import msgspec
import trio

from ultra.config import RequestOptions
from ultra.collect.chat_wire import encode, request_body
from ultra.collect.client import BACKOFF_BASE, BACKOFF_CAP, Failure, HttpChatModel, RouteClient, ShardCounters
from ultra.collect.limits import RateLimiter
from ultra.collect.plan import Route
from ultra.collect.secrets import resolve_secret, route_place
from ultra.events import Usage
from ultra.suites import ChatResponse, ContextLengthExceeded, ModelUnavailable

__all__ = ["PREFLIGHT_TIMEOUT", "PREFLIGHT_TOKENS", "RouteCheck", "preflight"]

PREFLIGHT_TOKENS = 16  # a cap on the answer, where the model's options name one
PREFLIGHT_TIMEOUT = 30.0  # seconds for a route's whole preflight: a dead route is told at once


class RouteCheck(msgspec.Struct, frozen=True):
    """What a route's preflight request found: it answers, or the status and message; and
    the tokens its answers cost."""

    ok: bool
    http_status: int | None = None
    message: str = ""
    usage: Usage = Usage()
    simulated: bool = False
    latency_s: float | None = None  # of the answered request (what `ultra run` sizes by)


async def preflight(route: Route, options: RequestOptions, *, request_timeout: float,
                    max_retries: int, deadline: float, qps: float = 1000.0) -> RouteCheck:
    """One cheap request on a route: does it answer at all? Retryable failures are retried
    (bounded by `max_retries` and the `deadline`); a non-retryable one is final."""
    try:
        secret = resolve_secret(route)
    except ModelUnavailable as exc:
        return RouteCheck(ok=False, message=exc.message)
    capped = msgspec.structs.replace(
        options,
        max_tokens=PREFLIGHT_TOKENS if options.max_tokens is not None else None,
        max_completion_tokens=PREFLIGHT_TOKENS if options.max_completion_tokens is not None else None,
    )
    messages = [{"role": "user", "content": "Reply with OK."}]
    rng = random.Random(route.url)
    async with RouteClient(route, 1) as client:
        model = HttpChatModel(client, route, (RateLimiter(qps),), ShardCounters(),
                              request_timeout=request_timeout, max_retries=max_retries, rng=rng,
                              options=capped, secrets=(secret,))
        payload = encode(request_body(route, capped, messages, None))
        failures = throttled = 0
        last = Failure("timeout", f"no answer before the preflight deadline from {route_place(route.url)}")

        def found(ok: bool, outcome: Failure | None = None) -> RouteCheck:
            return RouteCheck(ok=ok, http_status=outcome and outcome.http_status,
                              message=outcome.message if outcome else "", usage=model.usage,
                              simulated=model.simulated,
                              latency_s=trio.current_time() - sent if ok else None)

        with trio.move_on_at(deadline):
            while True:
                sent = trio.current_time()
                try:
                    outcome = await model._paced_attempt(payload)
                except ContextLengthExceeded:
                    return found(True)  # it answered
                if isinstance(outcome, ChatResponse):
                    return found(True)  # a chat completion, not any 200 (HTML, an error)
                last = outcome
                if not outcome.retryable:
                    return found(False, outcome)
                if outcome.reason == "rate_limited":  # backed off, even without a Retry-After
                    throttled = min(throttled + 1, 6)
                    await trio.sleep(rng.uniform(0.5, 1.0) * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** throttled))
                    continue
                failures += 1
                if failures > max_retries:
                    break
                await trio.sleep(rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** failures)))
        return found(False, last)
