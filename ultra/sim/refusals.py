"""What the real APIs say when they refuse, as the simulator says it: OpenAI's and Azure's
error bodies, and their rate-limit headers (`x-ratelimit-limit-*`, `-remaining-*`,
`-reset-*` in OpenAI's duration form). The simulator is held to the documented behaviour:
a difference found is fixed here."""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any

import msgspec

from ultra.sim.accounting import SlidingWindow, TokenWindow
from ultra.sim.replies import error_body

__all__ = ["AZURE_BAD_KEY", "CONTEXT_LENGTH", "MAX_TOKENS_UNSUPPORTED", "NO_API_VERSION", "NO_KEY",
           "RATE_LIMITED", "SERVER_ERRORS", "format_duration", "limit_headers", "masked_key", "rate_headers",
           "retry_headers"]


def format_duration(seconds: float) -> str:
    """OpenAI's reset form: `20ms`, `1.5s`, `6m0s`, `1h2m3s` (rounded up to the millisecond)."""
    ms = math.ceil(seconds * 1000 - 1e-9)
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    sec = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{sec}s"


def masked_key(key: str) -> str:
    """How OpenAI quotes a wrong key back: its first and last characters only."""
    return key[:3] + "*" * max(4, len(key) - 7) + key[-4:] if len(key) > 10 else "*" * len(key)


RATE_LIMITED = error_body(
    "Rate limit reached for requests. Please retry after the time in Retry-After.", "requests", "rate_limit_exceeded"
)
CONTEXT_LENGTH = error_body(
    "This model's maximum context length is 8192 tokens. However, your messages resulted in more tokens. "
    "Please reduce the length of the messages.",
    "invalid_request_error",
    "context_length_exceeded",
    "messages",
)
SERVER_ERRORS = {
    500: error_body("The server had an error while processing your request.", "server_error", "internal_error"),
    502: error_body("Bad gateway.", "server_error", "bad_gateway"),
    503: error_body("The engine is currently overloaded, please try again later.", "server_error", "overloaded"),
}
NO_KEY = error_body(
    "You didn't provide an API key (Authorization: Bearer <key>, or api-key for Azure).",
    "invalid_request_error",
    "invalid_api_key",
)
AZURE_BAD_KEY = msgspec.json.encode({"error": {"code": "401", "message": (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
    "valid key for an active subscription and use a correct regional API endpoint for your resource.")}})
MAX_TOKENS_UNSUPPORTED = error_body(
    "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
    "invalid_request_error", "unsupported_parameter", "max_tokens")
NO_API_VERSION = error_body("The api-version query parameter is required.", "invalid_request_error", "missing_api_version")


def limit_headers(prefix: bytes, now: float, window: SlidingWindow | None, tokens: TokenWindow | None,
                   reset: bool) -> list[tuple[bytes, bytes]]:
    """`{prefix}limit-requests`, `{prefix}remaining-requests` (and `{prefix}reset-requests`
    when `reset`), the same for tokens."""
    out: list[tuple[bytes, bytes]] = []
    if window is not None:
        out += [(prefix + b"limit-requests", str(window.capacity).encode()),
                (prefix + b"remaining-requests", str(window.remaining(now)).encode())]
        if reset:
            out.append((prefix + b"reset-requests", format_duration(window.reset_in(now)).encode()))
    if tokens is not None:
        out += [(prefix + b"limit-tokens", str(int(tokens.tpm)).encode()),
                (prefix + b"remaining-tokens", str(tokens.remaining(now)).encode())]
        if reset:
            out.append((prefix + b"reset-tokens", format_duration(tokens.reset_in(now)).encode()))
    return out


def retry_headers(limits: Any) -> list[tuple[bytes, bytes]]:
    """The headers a 429 carries, each saying "wait `limits.retry_after_s`" in its own form
    (`limits`: the simulator's `LimitsConfig`)."""
    wait = limits.retry_after_s
    out: list[tuple[bytes, bytes]] = []
    for name in limits.retry_headers:
        if name == "retry-after":
            # an HTTP date has whole seconds: round up, never tell a client to come early
            value = (email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)
                     if limits.retry_after_http_date else str(math.ceil(wait)))
        elif name == "retry-after-ms":
            value = str(math.ceil(wait * 1000))
        else:
            value = format_duration(wait)
            remaining = b"x-ratelimit-remaining-" + name.rsplit("-", 1)[1].encode()
            out.append((remaining, b"0"))
        out.append((name.encode(), value.encode()))
    return out


def rate_headers(style: str, now: float, key_window: SlidingWindow | None, dep_window: SlidingWindow | None,
                 key_tokens: TokenWindow | None, dep_tokens: TokenWindow | None) -> list[tuple[bytes, bytes]]:
    """What is left of the route's limits once this request is counted, in the header
    `style` of the simulator's config (LiteLLM's styles name no reset)."""
    if style == "litellm-key":
        return (limit_headers(b"x-ratelimit-api_key-", now, key_window, key_tokens, False)
                + limit_headers(b"x-ratelimit-", now, dep_window, dep_tokens, False))
    return limit_headers(b"x-ratelimit-", now, dep_window or key_window, dep_tokens or key_tokens,
                         style == "openai")
