"""What the providers' rate-limit headers say, and what ultra does about it (pure).

Rate-limit headers come in three styles. OpenAI and Azure send `x-ratelimit-limit-*`,
`-remaining-*` and `-reset-*` (requests, tokens): when little is left ultra pauses until
the reset. Gateways send counts without a reset: LiteLLM's key limits
`x-ratelimit-api_key-limit-*` / `-remaining-*`, its model limits `x-ratelimit-limit-*` /
`-remaining-*` alone. Without a reset ultra assumes the provider's window, one minute
(PROVIDER_WINDOW, as per-minute limits are), and *paces* instead of stopping dead: once
fewer than half the limit is left (PACE_SHARE; without a limit, fewer than PACE_UNKNOWN
requests' worth), the slots are spaced `W * n / (R + n)` apart (W the window, R what is
left, n what one request takes: 1 request, or its tokens), i.e. what is left is spread over
a whole window as if it had just begun. The spacing grows as R shrinks, and the gaps from
R down to 0 sum to more than W (W * (1/(R+1) + ... + 1) for requests), so a window passes,
and gives back what it held, before the count runs out; at R = 0 the gap is W itself:
nothing is sent for the provider's window. Above the mark there is no spacing, so a
sliding window settles about half full at the limit's own rate.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping

import msgspec

LOW_REMAINING = 0.02  # slow down when a header says less than this share of the limit is left
PROVIDER_WINDOW = 60.0  # seconds: the window of a limit whose headers name no reset
PACE_SHARE = 0.5  # without a reset, pace once less than this share of the limit is left
PACE_UNKNOWN = 10  # ... or, when no limit is said, fewer than this many requests' worth


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _plain_seconds(value: str | None) -> tuple[str | None, float | None]:
    """(the stripped header value or None when absent, its plain seconds or None)."""
    if not value:
        return None, None
    value = value.strip()
    try:
        return value, max(0.0, float(value))
    except ValueError:
        return value, None


def parse_duration(value: str | None) -> float | None:
    """OpenAI's reset durations: `1s`, `6m0s`, `20ms`, `1h2m3.5s`, or plain seconds."""
    value, seconds = _plain_seconds(value)
    if value is None or seconds is not None:
        return seconds
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    value, seconds = _plain_seconds(value)
    if value is None or seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class RateHeaders(msgspec.Struct, frozen=True, kw_only=True):
    """What a response says about the provider's limits (None: not said). `key_*`: a
    gateway's limits of the API key (LiteLLM's `x-ratelimit-api_key-*`), never with a reset."""

    retry_after: float | None = None  # retry-after-ms, else Retry-After
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    key_limit_requests: int | None = None
    key_remaining_requests: int | None = None
    key_limit_tokens: int | None = None
    key_remaining_tokens: int | None = None


NO_RATE_HEADERS = RateHeaders()


def read_rate_headers(headers: Mapping[str, str]) -> RateHeaders:
    """The rate-limit headers of a response (names lower-case), by dict lookups only (no
    regex unless a reset is not plain seconds); one that says nothing about limits costs
    eight lookups and no allocation."""
    ms = headers.get("retry-after-ms")
    retry_after = None
    if ms is not None:
        try:
            retry_after = max(0.0, float(ms) / 1000.0)
        except ValueError:
            retry_after = None
    if retry_after is None:
        retry_after = parse_retry_after(headers.get("retry-after"))
    get = headers.get
    openai = ("x-ratelimit-remaining-requests" in headers or "x-ratelimit-remaining-tokens" in headers
              or "x-ratelimit-reset-requests" in headers or "x-ratelimit-reset-tokens" in headers)
    key = "x-ratelimit-api_key-remaining-requests" in headers or "x-ratelimit-api_key-remaining-tokens" in headers
    if not (openai or key):
        return NO_RATE_HEADERS if retry_after is None else RateHeaders(retry_after=retry_after)
    return RateHeaders(
        retry_after=retry_after,
        limit_requests=_int(get("x-ratelimit-limit-requests")),
        remaining_requests=_int(get("x-ratelimit-remaining-requests")),
        reset_requests=parse_duration(get("x-ratelimit-reset-requests")),
        limit_tokens=_int(get("x-ratelimit-limit-tokens")),
        remaining_tokens=_int(get("x-ratelimit-remaining-tokens")),
        reset_tokens=parse_duration(get("x-ratelimit-reset-tokens")),
        key_limit_requests=_int(get("x-ratelimit-api_key-limit-requests")),
        key_remaining_requests=_int(get("x-ratelimit-api_key-remaining-requests")),
        key_limit_tokens=_int(get("x-ratelimit-api_key-limit-tokens")),
        key_remaining_tokens=_int(get("x-ratelimit-api_key-remaining-tokens")),
    )


def _low(remaining: int | None, limit: int | None, need: int) -> bool:
    if remaining is None:
        return False
    floor = LOW_REMAINING * limit if limit else 0
    return remaining < max(need, floor) or remaining <= 0


def wait_after_429(h: RateHeaders) -> float | None:
    """How long a 429 says to wait: retry-after(-ms), else the reset of an exhausted limit."""
    if h.retry_after is not None:
        return h.retry_after
    resets = []
    if h.reset_requests is not None and (h.remaining_requests is None or h.remaining_requests <= 0):
        resets.append(h.reset_requests)
    if h.reset_tokens is not None and (h.remaining_tokens is None or h.remaining_tokens <= 0):
        resets.append(h.reset_tokens)
    return max(resets) if resets else None


def requests_pause(h: RateHeaders) -> float:
    """Seconds to hold back before the next request, when the request limit runs low."""
    if h.reset_requests is not None and _low(h.remaining_requests, h.limit_requests, 1):
        return h.reset_requests
    return 0.0


def tokens_pause(h: RateHeaders, next_tokens: int) -> float:
    """Seconds to hold back when fewer tokens remain than the next request needs."""
    if h.reset_tokens is not None and _low(h.remaining_tokens, h.limit_tokens, next_tokens):
        return h.reset_tokens
    return 0.0


def _spread(remaining: int | None, limit: int | None, need: int) -> float | None:
    """The spacing a limit without reset asks for (see the module's docstring): None when
    not said, 0 while at least PACE_SHARE of the limit is left."""
    if remaining is None or remaining < 0:  # Azure says -1 for a limit it does not count
        return None
    need = max(1, need)
    mark = PACE_SHARE * limit if limit and limit > 0 else PACE_UNKNOWN * need
    if remaining >= mark:
        return 0.0
    return PROVIDER_WINDOW * need / (remaining + need)


def _larger(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None or a >= b else b


def requests_pace(h: RateHeaders) -> float | None:
    """Seconds between requests that request limits without reset ask for (the key's, and
    the model's when it names no reset); None when no such limit is said."""
    model = _spread(h.remaining_requests, h.limit_requests, 1) if h.reset_requests is None else None
    return _larger(model, _spread(h.key_remaining_requests, h.key_limit_requests, 1))


def tokens_pace(h: RateHeaders, next_tokens: int) -> float | None:
    """Seconds between requests of `next_tokens` that token limits without reset ask for."""
    model = (_spread(h.remaining_tokens, h.limit_tokens, next_tokens)
             if h.reset_tokens is None else None)
    return _larger(model, _spread(h.key_remaining_tokens, h.key_limit_tokens, next_tokens))


__all__ = ["LOW_REMAINING", "NO_RATE_HEADERS", "PACE_SHARE", "PACE_UNKNOWN", "PROVIDER_WINDOW",
           "parse_duration", "parse_retry_after", "RateHeaders", "read_rate_headers", "requests_pace",
           "requests_pause", "tokens_pace", "tokens_pause", "wait_after_429"]
