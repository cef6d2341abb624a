"""Per-shard pacing: requests per second by *arrival*, tokens per minute, and what the
provider's rate-limit headers say.

`RateLimiter` spaces request slots a little over `1/rate` apart, and a guard counts what
the server counts: requests *sent*. A slot is pending from its release until its bytes are
on the wire (`sent`), or until it is given up (`abandon`). A release waits until the sends
in the last window plus the pending ones leave room for one more, so however late a
pending request goes out, no window of `1 + WINDOW_MARGIN` s holds more than `floor(qps)`
sends. A 429 halves the rate (at most once per half second: a burst of 429s is one
signal) and pauses the shard for as long as the provider says; once 429s stop for a
cool-down the rate climbs back by 50 % a second.

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

`TokenBudget` paces tokens per minute: an estimate is spent before a request and corrected
with the response's `usage`. Providers evaluate tpm over short windows (Azure: 1-10 s), so
the budget is `tpm / 6` per 10 s, which also keeps every minute within `tpm`.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections import deque
from collections.abc import Mapping

import msgspec
import trio

DECREASE = 0.5
INCREASE = 1.5  # per second, once 429s have stopped: back to the limit in seconds, not minutes
COOLDOWN = 1.0  # seconds without a 429 before the rate climbs back
MIN_FRACTION = 0.02  # never below 2 % of the limit: keep probing
# Slots are spaced (1 + margin)/rate apart and the guard's window is 1 + margin long: a
# server that stamps arrivals up to 30 ms late or early still sees at most `qps` a second.
WINDOW_MARGIN = 0.03
TOKEN_WINDOW = 10.0  # seconds over which a tpm budget is paced (tpm / 6 in each)
LOW_REMAINING = 0.02  # slow down when a header says less than this share of the limit is left
PROVIDER_WINDOW = 60.0  # seconds: the window of a limit whose headers name no reset
PACE_SHARE = 0.5  # without a reset, pace once less than this share of the limit is left
PACE_UNKNOWN = 10  # ... or, when no limit is said, fewer than this many requests' worth


class RateLimiter:
    def __init__(self, qps: float) -> None:
        self.limit = float(qps)
        self.rate = float(qps)
        self._next = 0.0
        self._paused_until = 0.0
        self._gap = 0.0  # the spacing a limit without reset asks for (`pace`)
        self._last_slot = -1e9
        self._last_429 = -1e9
        self._last_change = -1e9
        self.min_rate = self.rate  # the lowest it went: shows a back-off in the progress
        self._capacity = max(1, math.floor(self.limit))
        self._window = (1.0 + WINDOW_MARGIN) * (1.0 if self.limit >= 1 else 1.0 / self.limit)
        self._sent: deque[float] = deque(maxlen=self._capacity)  # the last send times
        self._pending = 0  # released, not yet sent nor abandoned
        self._changed = trio.Event()

    async def acquire(self) -> None:
        """Wait for a slot. The caller then calls `sent()` or `abandon()` exactly once."""
        now = trio.current_time()
        if self.rate < self.limit and now - self._last_429 >= COOLDOWN and now - self._last_change >= 1.0:
            self.rate = min(self.limit, self.rate * INCREASE)
            self._last_change = now
        slot = max(now, self._next, self._paused_until)
        self._next = slot + max((1.0 + WINDOW_MARGIN) / self.rate, self._gap)
        self._last_slot = slot
        if slot > now:
            await trio.sleep_until(slot)
        sent = self._sent
        while True:
            allowed = self._capacity - self._pending - 1  # sends the window may still hold
            if allowed < 0:
                await self._changed.wait()  # until a pending request goes out or is dropped
                continue
            if len(sent) > allowed:
                free_at = sent[-(allowed + 1)] + self._window
                if trio.current_time() < free_at:
                    await trio.sleep_until(free_at)
                    continue
            if trio.current_time() < self._paused_until:  # a 429 arrived while we waited
                await trio.sleep_until(self._paused_until)
                continue
            break
        self._pending += 1  # no await since the checks: atomic in trio

    def sent(self) -> None:
        """The request's bytes are on the wire: it counts from now."""
        self._pending -= 1
        now = trio.current_time()
        sent = self._sent
        sent.append(now)
        cutoff = now - self._window  # older sends no longer count: not kept (a run's worth at
        while sent[0] < cutoff:      # a high qps limit was megabytes)
            sent.popleft()
        self._wake()

    def abandon(self) -> None:
        """The released request never went out (connection failed, cancelled)."""
        self._pending -= 1
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds` (a provider's Retry-After, or its limit running low)."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, trio.current_time() + seconds)

    def pace(self, gap: float) -> None:
        """Space the slots at least `gap` seconds apart from the last one (0: as the rate
        says): what a limit without a reset asks for (`requests_pace`, `tokens_pace`)."""
        if gap != self._gap:
            self._gap = gap
            self._next = self._last_slot + max((1.0 + WINDOW_MARGIN) / self.rate, gap)

    def held_for(self) -> float:
        """Seconds until the server lets the next request go: a pause (Retry-After, a
        reset) or the spacing of a limit without reset; 0 when it does not hold us back."""
        held = max(self._paused_until, self._last_slot + self._gap if self._gap else 0.0)
        try:
            return max(0.0, held - trio.current_time())
        except RuntimeError:  # outside trio: nothing runs, nothing is held
            return 0.0

    def on_429(self, retry_after: float | None) -> None:
        now = trio.current_time()
        self._last_429 = now
        if now - self._last_change >= 0.5:
            self.rate = max(self.limit * MIN_FRACTION, self.rate * DECREASE)
            self.min_rate = min(self.min_rate, self.rate)
            self._last_change = now
        if retry_after:
            self.pause(retry_after)


class Spend:
    """Tokens one request holds in a budget's window, until corrected or expired."""

    __slots__ = ("at", "tokens", "live")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens
        self.live = True


class TokenBudget:
    """Tokens per minute, paced as `tpm / 6` in any window of 10 s (plus the margin)."""

    def __init__(self, tpm: float) -> None:
        self.tpm = float(tpm)
        self.capacity = self.tpm * TOKEN_WINDOW / 60.0
        self._window = TOKEN_WINDOW * (1.0 + WINDOW_MARGIN)
        self._spends: deque[Spend] = deque()
        self._total = 0
        self._paused_until = 0.0
        self._changed = trio.Event()

    def _expire(self, now: float) -> None:
        spends = self._spends
        while spends and spends[0].at + self._window <= now:  # as the wait below computes it
            s = spends.popleft()
            s.live = False
            self._total -= s.tokens

    async def acquire(self, estimate: int) -> Spend:
        """Wait until `estimate` tokens fit in the window, then spend them."""
        while True:
            now = trio.current_time()
            if now < self._paused_until:
                await trio.sleep_until(self._paused_until)
                continue
            self._expire(now)
            # A request larger than the whole budget goes alone into an empty window.
            if self._total + estimate <= self.capacity or not self._spends:
                break
            with trio.move_on_at(self._spends[0].at + self._window):
                await self._changed.wait()  # a correction may free tokens sooner
        spend = Spend(trio.current_time(), estimate)
        self._spends.append(spend)
        self._total += estimate
        return spend

    def correct(self, spend: Spend, actual: int) -> None:
        """Replace the estimate with what the response's `usage` says was used."""
        if spend.live:
            self._total += actual - spend.tokens
            spend.tokens = actual
            self._changed.set()
            self._changed = trio.Event()

    def pause(self, seconds: float) -> None:
        if seconds > 0:
            self._paused_until = max(self._paused_until, trio.current_time() + seconds)


# ---- the providers' rate-limit headers (pure) ------------------------------------------

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


# ---- concurrency under timeouts (AIMD) --------------------------------------------------


class Concurrency:
    """How many of a shard's requests may be in flight: additive increase, multiplicative
    decrease, as TCP's congestion window.

    A server that answers one request at a time (a local model with one slot) keeps
    computing the requests a client gave up on; every retry then queues behind them. So a
    timeout halves the window (once per round: a timeout of a request sent before the last
    cut is the same signal, not a new one), and each answer widens it by `1/window`, about
    one slot per round of answers, back up to the shard's `workers`. The window never goes
    below one: one request at a time always goes on.
    """

    __slots__ = ("workers", "window", "in_flight", "low", "_cut_at", "_lot")

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.window = float(workers)
        self.in_flight = 0
        self.low = workers  # the smallest the window went, for the summary
        self._cut_at = -math.inf
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def slots(self) -> int:
        return max(1, int(self.window))

    async def acquire(self) -> None:
        """Wait for a slot; the caller calls `release` exactly once afterwards."""
        while self.in_flight >= self.slots:
            await self._lot.park()
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def answered(self) -> None:
        if self.window < self.workers:
            self.window = min(float(self.workers), self.window + 1.0 / self.window)
            self._wake()

    def timed_out(self, sent_at: float) -> None:
        if sent_at >= self._cut_at:  # sent after the last cut: a new signal
            self.window = max(1.0, self.window / 2)
            self.low = min(self.low, self.slots)
            self._cut_at = trio.current_time()

    def _wake(self) -> None:
        free = self.slots - self.in_flight
        if free > 0 and self._lot:
            self._lot.unpark(count=free)


__all__ = ["Concurrency", "COOLDOWN", "DECREASE", "INCREASE", "LOW_REMAINING", "MIN_FRACTION",
           "NO_RATE_HEADERS", "PACE_SHARE", "PACE_UNKNOWN", "parse_duration",
           "parse_retry_after", "PROVIDER_WINDOW", "RateHeaders", "RateLimiter",
           "read_rate_headers", "requests_pace", "requests_pause", "Spend", "TOKEN_WINDOW",
           "TokenBudget", "tokens_pace", "tokens_pause", "wait_after_429", "WINDOW_MARGIN"]
