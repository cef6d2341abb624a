"""Per-shard pacing: requests per second by *arrival*, tokens per minute, and the
concurrency window under timeouts.

`RateLimiter` spaces request slots a little over `1/rate` apart, and a guard counts what
the server counts: requests *sent*. A slot is pending from its release until its bytes are
on the wire (`sent`), or until it is given up (`abandon`). A release waits until the sends
in the last window plus the pending ones leave room for one more, so however late a
pending request goes out, no window of `1 + WINDOW_MARGIN` s holds more than `floor(qps)`
sends. A 429 halves the rate (at most once per half second: a burst of 429s is one
signal) and pauses the shard for as long as the provider says; once 429s stop for a
cool-down the rate climbs back by 50 % a second.

The providers' rate-limit headers are read by ultra/collect/rate_headers.py.

`TokenBudget` paces tokens per minute: an estimate is spent before a request and corrected
with the response's `usage`. Providers evaluate tpm over short windows (Azure: 1-10 s), so
the budget is `tpm / 6` per 10 s, which also keeps every minute within `tpm`.
"""

from __future__ import annotations

import math
from collections import deque

import trio

DECREASE = 0.5
INCREASE = 1.5  # per second, once 429s have stopped: back to the limit in seconds, not minutes
COOLDOWN = 1.0  # seconds without a 429 before the rate climbs back
MIN_FRACTION = 0.02  # never below 2 % of the limit: keep probing
# Slots are spaced (1 + margin)/rate apart and the guard's window is 1 + margin long: a
# server that stamps arrivals up to 30 ms late or early still sees at most `qps` a second.
WINDOW_MARGIN = 0.03
TOKEN_WINDOW = 10.0  # seconds over which a tpm budget is paced (tpm / 6 in each)


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


__all__ = ["Concurrency", "COOLDOWN", "DECREASE", "INCREASE", "MIN_FRACTION", "RateLimiter",
           "Spend", "TOKEN_WINDOW", "TokenBudget", "WINDOW_MARGIN"]
