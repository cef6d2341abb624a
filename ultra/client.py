"""The HTTP side of a shard: an OpenAI-compatible or Azure `ChatModel` on httpx.

One `httpx.AsyncClient` per shard (its pool sized to the shard's workers, the route's
auth header set once); one cheap `HttpChatModel` per test, which counts that test's
retries and tokens. Failures are classified here, once:

- 429: honour Retry-After, slow the shard's pacer; bounded by the test's time budget.
- 5xx, timeouts, connection errors, malformed or empty bodies: exponential backoff with
  full jitter, at most `max_retries` times, then `ModelUnavailable` (-> `test.errored`).
- 400 context length: `ContextLengthExceeded` (the model took the test and failed it).
- other 4xx (bad key, unknown deployment): `ModelUnavailable` at once; retrying cannot help.
"""

from __future__ import annotations

import os
import random
from typing import Any

import httpx
import msgspec
import trio

from ultra.events import Usage
from ultra.limits import RateLimiter, parse_retry_after
from ultra.plan import Route
from ultra.suites import ChatResponse, ContextLengthExceeded, ModelUnavailable, ToolCall

BACKOFF_BASE = 0.25  # seconds; attempt n waits uniform(0, min(cap, base * 2**n))
BACKOFF_CAP = 8.0


class _Function(msgspec.Struct):
    name: str = ""
    arguments: str | dict[str, Any] | None = None


class _ToolCall(msgspec.Struct):
    function: _Function
    id: str = ""


class _Message(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Response(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None


_decode_response = msgspec.json.Decoder(_Response).decode
_encode = msgspec.json.Encoder().encode


class ShardCounters:
    """What a shard's requests did, for the progress display (plain mutable counters)."""

    __slots__ = ("requests", "retries", "throttled")

    def __init__(self) -> None:
        self.requests = 0
        self.retries = 0
        self.throttled = 0


def resolve_secret(route: Route) -> str:
    """The route's API key, read from the environment at the last moment."""
    if route.key_literal is not None:
        return route.key_literal
    value = os.environ.get(route.key_env or "")
    if not value:
        raise ModelUnavailable("bad_request", f"environment variable {route.key_env} is not set")
    return value


def open_client(route: Route, workers: int) -> httpx.AsyncClient:
    secret = resolve_secret(route)
    auth = {"authorization": f"Bearer {secret}"} if route.shape == "openai" else {"api-key": secret}
    return httpx.AsyncClient(
        headers={**auth, "content-type": "application/json"},
        limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
        timeout=None,  # the request timeout is a trio cancel scope, below
    )


def _to_chat_response(body: _Response) -> ChatResponse | None:
    if not body.choices or body.choices[0].message is None:
        return None
    choice = body.choices[0]
    msg = choice.message
    assert msg is not None
    calls = [
        ToolCall(
            id=c.id or f"call_{i}",
            name=c.function.name,
            arguments=c.function.arguments if isinstance(c.function.arguments, str)
            else _encode(c.function.arguments or {}).decode(),
        )
        for i, c in enumerate(msg.tool_calls or ())
    ]
    if not calls and not msg.content and not msg.reasoning_content:
        return None  # an empty turn is a fault of the service, not an answer
    usage = body.usage or _Usage()
    return ChatResponse(
        content=msg.content,
        tool_calls=calls,
        reasoning_content=msg.reasoning_content,
        finish_reason=choice.finish_reason,
        usage=Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens),
    )


class HttpChatModel:
    """A `ChatModel` for one test on one shard's route."""

    def __init__(self, client: httpx.AsyncClient, route: Route, limiters: tuple[RateLimiter, ...],
                 counters: ShardCounters, *, request_timeout: float, max_retries: int,
                 rng: random.Random) -> None:
        self._client = client
        self._route = route
        self._limiters = limiters  # the shard's own pacer, and a key's shared one if any
        self._counters = counters
        self._timeout = request_timeout
        self._max_retries = max_retries
        self._rng = rng
        self.retries = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    async def complete(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None) -> ChatResponse:
        body: dict[str, Any] = {"messages": messages}
        if self._route.api_model is not None:
            body["model"] = self._route.api_model
        if tools:
            body["tools"] = tools
        payload = _encode(body)
        failures = 0
        while True:
            for limiter in self._limiters:
                await limiter.acquire()
            self._counters.requests += 1
            outcome, detail = await self._attempt(payload)
            if isinstance(outcome, ChatResponse):
                self.prompt_tokens += outcome.usage.prompt_tokens
                self.completion_tokens += outcome.usage.completion_tokens
                return outcome
            self.retries += 1
            self._counters.retries += 1
            if outcome == "rate_limited":
                continue  # the pacer already waits out Retry-After; the test's budget bounds it
            failures += 1
            if failures > self._max_retries:
                raise ModelUnavailable(outcome, detail, self.retries)
            await trio.sleep(self._rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** failures)))

    async def _attempt(self, payload: bytes) -> tuple[ChatResponse | str, str]:
        """One request: a response, or (retryable reason, detail). Raises when final."""
        try:
            with trio.fail_after(self._timeout):
                resp = await self._client.post(self._route.url, content=payload)
        except trio.TooSlowError:
            return "timeout", f"no response within {self._timeout:g}s"
        except httpx.TimeoutException:
            return "timeout", "httpx timeout"
        except httpx.TransportError as exc:
            return "connection", type(exc).__name__
        status = resp.status_code
        if status == 200:
            try:
                parsed = _to_chat_response(_decode_response(resp.content))
            except (msgspec.DecodeError, msgspec.ValidationError):
                return "malformed_response", "body is not a chat completion"
            if parsed is None:
                return "malformed_response", "empty choices or empty message"
            return parsed, ""
        if status == 429:
            self._counters.throttled += 1
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            for limiter in self._limiters:
                limiter.on_429(retry_after)
            return "rate_limited", "HTTP 429"
        if status >= 500:
            return "server_error", f"HTTP {status}"
        if status == 400 and b"context_length" in resp.content:
            raise ContextLengthExceeded(f"HTTP 400 from {self._route.shape} route")
        raise ModelUnavailable("bad_request", f"HTTP {status}", self.retries)
