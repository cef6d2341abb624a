"""Per-shard request pacing: a QPS limit that backs off on 429 and climbs back.

A pacer with a burst of one: request slots are spaced a little over `1/rate` apart. Slots
alone are not enough: a task that wakes late (a busy loop, a GC pause) goes out late while
later slots go out on time, and a late first slot plus on-time followers can crowd a
window. So a guard also counts the *actual* release times: never more than `floor(qps)`
in any window of 1 s (plus the margin), however late anyone woke. A 429 halves the rate
(at most once per half second: a burst of 429s is one signal) and pauses the shard until
`Retry-After`; once 429s stop for a cool-down, the rate climbs back by 50 % a second.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections import deque

import trio

DECREASE = 0.5
INCREASE = 1.5  # per second, once 429s have stopped: back to the limit in seconds, not minutes
COOLDOWN = 1.0  # seconds without a 429 before the rate climbs back
MIN_FRACTION = 0.02  # never below 2 % of the limit: keep probing
# Slots are spaced (1 + margin)/rate apart, so `qps` + 1 starts span 1.03 s: requests that
# the scheduler or the network delay by up to 30 ms still land within the provider's limit.
WINDOW_MARGIN = 0.03


class RateLimiter:
    def __init__(self, qps: float) -> None:
        self.limit = float(qps)
        self.rate = float(qps)
        self._next = 0.0
        self._paused_until = 0.0
        self._last_429 = -1e9
        self._last_change = -1e9
        self.min_rate = self.rate  # the lowest it went: shows a back-off in the progress
        # The guard: the last `capacity` release times may not fit in one `window`.
        capacity = max(1, math.floor(self.limit))
        self._window = (1.0 + WINDOW_MARGIN) * (1.0 if self.limit >= 1 else 1.0 / self.limit)
        self._released: deque[float] = deque(maxlen=capacity)

    async def acquire(self) -> None:
        now = trio.current_time()
        if self.rate < self.limit and now - self._last_429 >= COOLDOWN and now - self._last_change >= 1.0:
            self.rate = min(self.limit, self.rate * INCREASE)
            self._last_change = now
        slot = max(now, self._next, self._paused_until)
        self._next = slot + (1.0 + WINDOW_MARGIN) / self.rate
        if slot > now:
            await trio.sleep_until(slot)
        released = self._released
        while len(released) == released.maxlen and trio.current_time() < released[0] + self._window:
            await trio.sleep_until(released[0] + self._window)
        released.append(trio.current_time())  # no await since the check: atomic in trio

    def on_429(self, retry_after: float | None) -> None:
        now = trio.current_time()
        self._last_429 = now
        if now - self._last_change >= 0.5:
            self.rate = max(self.limit * MIN_FRACTION, self.rate * DECREASE)
            self.min_rate = min(self.min_rate, self.rate)
            self._last_change = now
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
