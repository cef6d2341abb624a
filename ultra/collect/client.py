"""The HTTP side of a shard: an OpenAI-compatible or Azure `ChatModel` over ultra.collect.http11.

A shard's connections are split over small pools (`RouteClient`: the route's URL
and auth header built once); one cheap `HttpChatModel` per test, which counts that test's
retries and tokens. Failures are classified here, once:

- 429: wait as the provider says (retry-after-ms, Retry-After, x-ratelimit-reset-*), slow
  the shard's pacer; bounded by the test's time budget. Before any 429, a limit running
  low pauses until its reset or, named without reset (gateways), spaces the requests.
- 5xx, 408, timeouts, connection errors, malformed or empty bodies: exponential backoff
  with full jitter, at most `max_retries` times, then `ModelUnavailable` (-> `test.errored`).
- 400 context length: `ContextLengthExceeded` (the model took the test and failed it).
- 401, 403, 404, any other 4xx: `ModelUnavailable` at once, and the route's health counts
  it: retrying cannot help, and N in a row mean the route is broken. A content-filter
  refusal (400) fails the test without counting against the route.

Every error keeps the HTTP status and the server's own message, with secrets redacted.
A reply that carries the simulator's mark makes the test `simulated`, whatever the
provider kind says.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import trio

from ultra import __version__
from ultra.config import RequestOptions
from ultra.collect.http11 import BodyTooLarge, Pool, TransportError, environment_proxy
from ultra.events import Usage
from ultra.collect.limits import Concurrency, RateLimiter, Spend, TokenBudget
from ultra.collect.rate_headers import (
    NO_RATE_HEADERS,
    read_rate_headers,
    requests_pace,
    requests_pause,
    tokens_pace,
    tokens_pause,
    wait_after_429,
)
from ultra.collect.chat_wire import decode_response, encode, request_body, to_chat_response, usage_of
from ultra.collect.plan import Route
from ultra.collect.secrets import (MESSAGE_CHARS, location_message, resolve_secret, route_place,
                                   server_message, transport_message)
from ultra.suites import ChatResponse, ContextLengthExceeded, ModelUnavailable

BACKOFF_BASE = 0.25  # seconds; attempt n waits uniform(0, min(cap, base * 2**n))
BACKOFF_CAP = 8.0
SIMULATED_HEADER = "x-ultra-simulated"
COMPLETION_GUESS = 256  # tokens a completion is assumed to take before any was seen


class ShardCounters:
    """What a shard's requests did, for the progress display and the run's summary."""

    __slots__ = ("requests", "retries", "throttled", "prompt_tokens", "completion_tokens",
                 "reasoning_tokens")

    def __init__(self) -> None:
        self.requests = 0
        self.retries = 0
        self.throttled = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.reasoning_tokens = 0


class RouteHealth:
    """Consecutive non-retryable answers on one route; `broken_after` of them break it.

    A timeout counts like a refusal only when the server has answered nothing since that
    request was sent, nor for `quiet` seconds (`broken_after` request timeouts): a server
    that never answered breaks its route after `broken_after` timeouts; one that answers,
    only slowly (a one-slot server still computing the requests clients gave up on, while
    the shard's window shrinks), does not; one that stopped answering does once it has been
    silent that long.
    """

    __slots__ = ("broken_after", "consecutive", "broken", "answered_at", "quiet")

    def __init__(self, broken_after: int, quiet: float = 0.0) -> None:
        self.broken_after = broken_after
        self.quiet = quiet
        self.consecutive = 0
        self.broken: str | None = None  # why, once broken: "HTTP 401: <server message>"
        self.answered_at = -math.inf  # trio time of the route's last HTTP answer of any kind

    def ok(self) -> None:
        self.consecutive = 0

    def timed_out(self, sent_at: float, why: str) -> None:
        answered = self.answered_at
        if answered < sent_at and trio.current_time() - answered >= self.quiet:
            self.refused(why)

    def refused(self, why: str) -> None:
        self.consecutive += 1
        if self.broken is None and self.consecutive >= self.broken_after:
            self.broken = why


CONNECTIONS_PER_CLIENT = 4
USER_AGENT = f"ultra/{__version__}"  # some gateways refuse a request without one


MAX_BODY_BYTES = 8 * 2**20  # a chat completion is KBs; a body past this is an error, unread


class RouteClient(Pool):
    """One small connection pool on a route (ultra.collect.http11): the route's URL, auth header and
    the proxy the environment names, settled once per route, not per request."""

    __slots__ = ()

    def __init__(self, route: Route, connections: int) -> None:
        secret = resolve_secret(route)
        auth = ("authorization", f"Bearer {secret}") if route.shape == "openai" else ("api-key", secret)
        headers = [auth, ("content-type", "application/json"), ("accept", "application/json"),
                   ("user-agent", USER_AGENT)]
        super().__init__(route.url, headers, connections, max_body=MAX_BODY_BYTES,
                         proxy=environment_proxy(httpx.URL(route.url)))


@contextlib.asynccontextmanager
async def open_clients(route: Route, workers: int) -> AsyncIterator[list[RouteClient]]:
    """A shard's connections split over small clients of at most CONNECTIONS_PER_CLIENT
    each; worker `i` uses client `i % len(clients)`, so no pool outgrows its size."""
    n = max(1, -(-workers // CONNECTIONS_PER_CLIENT))
    size = -(-workers // n)
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(RouteClient(route, size)) for _ in range(n)]


class Failure(msgspec.Struct, frozen=True):
    """A request that did not give an answer: why, and what the server said."""

    reason: str
    message: str
    http_status: int | None = None
    retryable: bool = True


class HttpChatModel:
    """A `ChatModel` for one test on one shard's route."""

    def __init__(self, client: RouteClient, route: Route, limiters: tuple[RateLimiter, ...],
                 counters: ShardCounters, *, request_timeout: float, max_retries: int,
                 rng: random.Random, options: RequestOptions = RequestOptions(),
                 budgets: tuple[TokenBudget, ...] = (), health: RouteHealth | None = None,
                 secrets: tuple[str, ...] = (), concurrency: Concurrency | None = None) -> None:
        self._client = client
        self._route = route
        self._limiters = limiters  # the shard's own pacer, and a key's shared one if any
        self._budgets = budgets  # tokens per minute: the shard's, and a key's shared one
        self._counters = counters
        self._timeout = request_timeout
        self._max_retries = max_retries
        self._rng = rng
        self._options = options
        self._health = health
        self._secrets = secrets
        self._concurrency = concurrency  # the shard's window of requests in flight
        self._sent_at = 0.0  # trio time the current request was let go
        self.retries = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.simulated = False  # a reply carried the simulator's mark
        self.finish_reasons: list[str] = []  # of every answer, in order ("" if none given)
        self._tools: list[dict[str, Any]] | None = None  # encoded once, as self._tools_json
        self._tools_json = msgspec.Raw(b"")
        # For the test's transcript (ultra/transcripts/__init__.py builds it once, at the end): the
        # last conversation sent (the suite's own list), one (sent, response, seconds,
        # attempts) per answer, and (sent, attempts) of a request still without one; an
        # attempt is (status, outcome, message, waited, latency). The suite may set
        # `scoring` to its breakdown.
        self.messages: list[dict[str, Any]] | None = None
        self.tools: list[dict[str, Any]] | None = None
        self.turns: list[tuple[int, ChatResponse, float, list[tuple[Any, ...]]]] = []
        self.pending: tuple[int, list[tuple[Any, ...]]] | None = None
        self.scoring: dict[str, Any] | None = None

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     reasoning_tokens=self.reasoning_tokens)

    def _estimate(self, payload: bytes) -> int:
        """Tokens a request may take: its bytes / 4 (tools and all) plus a completion."""
        cap = self._options.max_tokens or self._options.max_completion_tokens
        return len(payload) // 4 + (cap or max(COMPLETION_GUESS, self.completion_tokens))

    async def complete(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None) -> ChatResponse:
        if tools and tools is not self._tools:  # a test offers one list on every turn
            self._tools, self._tools_json = tools, msgspec.Raw(encode(tools))
        payload = encode(request_body(self._route, self._options, messages,
                                       self._tools_json if tools else None))
        failures = 0
        self.messages, self.tools = messages, tools
        attempts: list[tuple[Any, ...]] = []
        sent = len(messages)
        self.pending = (sent, attempts)
        begun = last = trio.current_time()
        while True:
            try:
                outcome = await self._paced_attempt(payload)
            except ContextLengthExceeded as exc:
                now = trio.current_time()
                attempts.append((400, "context_length", str(exc)[:MESSAGE_CHARS],
                                 max(0.0, self._sent_at - last), now - max(self._sent_at, last)))
                raise
            now = trio.current_time()
            at = max(self._sent_at, last)  # a wait cut short never sent: all of it waited
            if isinstance(outcome, ChatResponse):
                attempts.append((200, "ok", "", at - last, now - at))
                self.turns.append((sent, outcome, now - begun, attempts))
                self.pending = None
                return outcome
            attempts.append((outcome.http_status, outcome.reason, outcome.message, at - last, now - at))
            last = now
            self.retries += 1
            self._counters.retries += 1
            if outcome.reason == "rate_limited":
                continue  # the pacer already waits as told; the test's budget bounds it
            if not outcome.retryable or (outcome.reason == "timeout" and self._health is not None
                                         and self._health.broken):
                raise ModelUnavailable(outcome.reason, outcome.message, self.retries, outcome.http_status)
            failures += 1
            if failures > self._max_retries:
                raise ModelUnavailable(outcome.reason, outcome.message, self.retries, outcome.http_status)
            await trio.sleep(self._rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** failures)))

    async def _paced_attempt(self, payload: bytes) -> ChatResponse | Failure:
        """Spend the estimated tokens, wait for a request slot, send, correct the tokens."""
        window = self._concurrency
        if window is None:
            return await self._spend_and_send(payload)
        await window.acquire()
        try:
            return await self._spend_and_send(payload)
        finally:
            window.release()

    async def _spend_and_send(self, payload: bytes) -> ChatResponse | Failure:
        estimate = self._estimate(payload) if self._budgets else 0
        spends: list[tuple[TokenBudget, Spend]] = [(b, await b.acquire(estimate)) for b in self._budgets]
        for limiter in self._limiters:
            await limiter.acquire()
        now = self._sent_at = trio.current_time()
        for _, spend in spends:
            spend.at = max(spend.at, now)  # it counts from the send, not from the wait
        self._counters.requests += 1
        pending = list(self._limiters)

        def sent() -> None:
            for limiter in pending:
                limiter.sent()  # counted when the server can see it
            pending.clear()

        try:
            outcome = await self._attempt(payload, sent)
        finally:
            for limiter in pending:
                limiter.abandon()
        used = outcome.usage.prompt_tokens + outcome.usage.completion_tokens \
            if isinstance(outcome, ChatResponse) else 0
        for budget, spend in spends:
            budget.correct(spend, used)  # a failed request is charged nothing by the APIs
        return outcome

    async def _attempt(self, payload: bytes, sent: Callable[[], None]) -> ChatResponse | Failure:
        """One request: an answer, or why not. Raises when the model took and failed it."""
        scope = trio.CancelScope(deadline=trio.current_time() + self._timeout)
        try:
            with scope:  # not trio.fail_after: its generator costs CPU on every request
                status, headers_in, content = await self._client.post(payload, sent)
        except TransportError as exc:
            return Failure("connection", transport_message(exc, self._route.url))
        except BodyTooLarge as exc:
            return Failure("malformed_response", str(exc), retryable=False)
        if scope.cancelled_caught:
            return self._timed_out(f"no response within {self._timeout:g}s")
        if self._health is not None:
            self._health.answered_at = trio.current_time()
        if self._concurrency is not None:
            self._concurrency.answered()
        if SIMULATED_HEADER in headers_in:
            self.simulated = True
        headers = read_rate_headers(headers_in)
        if status == 429:
            self._counters.throttled += 1
            wait = wait_after_429(headers)
            for limiter in self._limiters:
                limiter.on_429(wait)
            for budget in self._budgets:
                budget.pause(wait or 0.0)
            return Failure("rate_limited", server_message(content, self._secrets), 429)
        if status == 200:
            try:
                body = decode_response(content)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return Failure("malformed_response", "body is not a chat completion", 200)
            u = usage_of(body.usage)  # paid for, even where the answer is no use
            self.prompt_tokens += u.prompt_tokens
            self.completion_tokens += u.completion_tokens
            self.reasoning_tokens += u.reasoning_tokens
            c = self._counters
            c.prompt_tokens += u.prompt_tokens
            c.completion_tokens += u.completion_tokens
            c.reasoning_tokens += u.reasoning_tokens
            parsed = to_chat_response(body, u)
            if parsed is None:
                return Failure("malformed_response", "empty choices or empty message", 200)
            if self._health is not None:
                self._health.ok()
            self.finish_reasons.append(parsed.finish_reason or "")
            self._heed(headers, u.prompt_tokens + u.completion_tokens)
            return parsed
        self._heed(headers, COMPLETION_GUESS)
        message = server_message(content, self._secrets)
        if status >= 500 or status == 408:  # the URL too: an Azure endpoint ending in /openai
            return Failure("server_error", f"{message} (from {route_place(self._route.url)})", status)
        if status == 400 and b"context_length" in content:
            raise ContextLengthExceeded(f"HTTP 400: {message}")
        if status == 400 and (b"content_filter" in content or b"content_policy" in content):
            return Failure("bad_request", message, status, retryable=False)  # the prompt, not the route
        if 300 <= status < 400 and headers_in.get("location"):  # ultra follows no redirect
            message = f"redirected to {location_message(headers_in['location'], self._secrets)}"
        if self._health is not None:  # the URL ultra built: a wrong path shows itself
            self._health.refused(f"HTTP {status}: {message} (from {route_place(self._route.url)})")
        return Failure("bad_request", message, status, retryable=False)

    def _timed_out(self, message: str) -> Failure:
        """A request without an answer in time counts against the route like a refusal
        (unless the server answered since it was sent): a server that accepts connections
        and never answers breaks its route after `broken_after` of them, instead of costing
        every test all its retries. It also halves the shard's window of requests in flight."""
        message = f"{message} from {route_place(self._route.url)}"
        if self._health is not None:
            self._health.timed_out(self._sent_at, f"timeout: {message}")
        if self._concurrency is not None:
            self._concurrency.timed_out(self._sent_at)
        return Failure("timeout", message)

    def _heed(self, h: Any, next_tokens: int) -> None:
        """Slow down before a 429 when the provider says its limit is running low (the next
        request is assumed to be about as large as the last): pause until a limit's reset,
        or space the requests as a limit without reset asks (`limits.requests_pace`)."""
        if h is NO_RATE_HEADERS:
            return
        gap = requests_pace(h)
        tokens_gap = tokens_pace(h, next_tokens)
        if tokens_gap is not None and (gap is None or tokens_gap > gap):
            gap = tokens_gap
        if gap is not None:
            for limiter in self._limiters:
                limiter.pace(gap)
        wait = requests_pause(h)
        if wait:
            for limiter in self._limiters:
                limiter.pause(wait)
        wait = tokens_pause(h, next_tokens)
        if wait:
            for limiter in self._limiters:
                limiter.pause(wait)
            for budget in self._budgets:
                budget.pause(wait)


__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "COMPLETION_GUESS", "CONNECTIONS_PER_CLIENT", "Failure",
           "HttpChatModel", "MAX_BODY_BYTES", "open_clients", "RouteClient",
           "RouteHealth", "ShardCounters", "SIMULATED_HEADER", "USER_AGENT"]
