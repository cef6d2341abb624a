"""Request accounting and sliding-window rate limiting for the simulator.

Both are plain classes with `__slots__` rather than Structs: they sit on the hot path and
are mutated on every request. `/stats` turns them into plain dicts.
"""

from __future__ import annotations

from collections import deque
from typing import Any

# The counters of one route (a key, a deployment, a model, or the total), in /stats order.
COUNTER_FIELDS: tuple[str, ...] = (
    "requests",  # every arrival on the chat routes, whatever became of it
    "accepted",  # admitted past auth, model lookup, storm and rate limits
    "rate_limited",  # answered 429 (rate limit or storm)
    "faults",  # accepted, then given an injected fault instead of a normal reply
    "rejected",  # 400/401/404 before admission (bad body, no key, unknown model)
    "in_flight",  # being handled right now
    "max_in_flight",
    "max_per_second",  # most arrivals in any half-open 1 s window (t - 1, t]
    "tokens",  # prompt tokens at admission plus completion tokens at the reply
    "max_tokens_10s",  # most tokens in any half-open 10 s window (t - 10, t]
    "usage_prompt_tokens",  # what the replies' `usage` reported: what a client is billed
    "usage_completion_tokens",
)
TOKEN_PERIOD = 10.0  # tpm is evaluated as tpm / 6 over this window, as Azure does


class RouteStats:
    __slots__ = (*COUNTER_FIELDS, "_arrivals", "_charges", "_charged")

    def __init__(self) -> None:
        self.requests = 0
        self.accepted = 0
        self.rate_limited = 0
        self.faults = 0
        self.rejected = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_per_second = 0
        self.tokens = 0
        self.max_tokens_10s = 0
        self.usage_prompt_tokens = 0
        self.usage_completion_tokens = 0
        self._arrivals: deque[float] = deque()
        self._charges: deque[tuple[float, int]] = deque()
        self._charged = 0  # tokens within the last TOKEN_PERIOD

    def charge(self, now: float, tokens: int) -> None:
        """Tokens processed at `now`; keeps the busiest 10 s window exact (it ends at a charge)."""
        self.tokens += tokens
        charges = self._charges
        charges.append((now, tokens))
        self._charged += tokens
        cutoff = now - TOKEN_PERIOD
        while charges[0][0] <= cutoff:
            self._charged -= charges.popleft()[1]
        if self._charged > self.max_tokens_10s:
            self.max_tokens_10s = self._charged

    def arrive(self, now: float) -> None:
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        # The busiest window always ends at an arrival, so checking at each arrival
        # finds the exact maximum.
        arrivals = self._arrivals
        arrivals.append(now)
        cutoff = now - 1.0
        while arrivals[0] <= cutoff:
            arrivals.popleft()
        if len(arrivals) > self.max_per_second:
            self.max_per_second = len(arrivals)

    def reset(self) -> None:
        """Zero everything but what is still in flight (those requests will `leave`)."""
        in_flight = self.in_flight
        self.__init__()  # type: ignore[misc]
        self.in_flight = self.max_in_flight = in_flight

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTER_FIELDS}


class SlidingWindow:
    """At most `capacity` admissions in any window of `period` seconds.

    A rate of r >= 1 req/s becomes floor(r) per 1 s; a rate below 1 becomes one request per
    1/r seconds, so `0.5` still means "one every two seconds". Only admitted requests fill
    the window: a client that keeps knocking is not locked out for ever.
    """

    __slots__ = ("capacity", "period", "_times")

    def __init__(self, rps: float) -> None:
        if rps >= 1.0:
            self.capacity, self.period = int(rps), 1.0
        else:
            self.capacity, self.period = 1, 1.0 / rps
        self._times: deque[float] = deque()

    @classmethod
    def per_minute(cls, rpm: float) -> SlidingWindow:
        """At most `floor(rpm)` admissions in any 60 s."""
        window = cls(1.0)
        window.capacity, window.period = int(rpm), 60.0
        return window

    def is_full(self, now: float) -> bool:
        times = self._times
        cutoff = now - self.period
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times) >= self.capacity

    def take(self, now: float) -> None:
        self._times.append(now)

    def remaining(self, now: float) -> int:
        self.is_full(now)  # drops what left the window
        return max(0, self.capacity - len(self._times))

    def reset_in(self, now: float) -> float:
        """Seconds until the oldest admission leaves the window (0 when it is empty)."""
        return max(0.0, self._times[0] + self.period - now) if self._times else 0.0


class TokenWindow:
    """Tokens per minute as Azure evaluates them: at most `tpm / 6` in any 10 s window.
    A request is refused while the window is full: the tokens it already holds and the
    prompt it brings must fit (its completion is charged when it is made)."""

    __slots__ = ("tpm", "capacity", "_charges", "_total")

    def __init__(self, tpm: float) -> None:
        self.tpm = tpm
        self.capacity = tpm * TOKEN_PERIOD / 60.0
        self._charges: deque[tuple[float, int]] = deque()
        self._total = 0

    def _expire(self, now: float) -> None:
        charges = self._charges
        cutoff = now - TOKEN_PERIOD
        while charges and charges[0][0] <= cutoff:
            self._total -= charges.popleft()[1]

    def is_full(self, now: float, prompt: int) -> bool:
        self._expire(now)
        return self._total + prompt > self.capacity and bool(self._charges)

    def take(self, now: float, tokens: int) -> None:
        self._charges.append((now, tokens))
        self._total += tokens

    def remaining(self, now: float) -> int:
        self._expire(now)
        return max(0, int(self.capacity - self._total))

    def reset_in(self, now: float) -> float:
        return max(0.0, self._charges[0][0] + TOKEN_PERIOD - now) if self._charges else 0.0


class Stats:
    """All counters, by route. Unknown models and deployments get no entry of their own,
    so a client sending junk names cannot grow the table without bound."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.reset_at = started
        self.total = RouteStats()
        self.keys: dict[str, RouteStats] = {}
        self.deployments: dict[str, RouteStats] = {}
        self.models: dict[str, RouteStats] = {}
        self.status: dict[int, int] = {}

    def reset(self, now: float) -> None:
        self.reset_at = now
        self.status = {}
        self.total.reset()
        for table in (self.keys, self.deployments, self.models):
            for name in [n for n, s in table.items() if s.in_flight == 0]:
                del table[name]
            for s in table.values():
                s.reset()

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "uptime_s": round(now - self.started, 3),
            "since_reset_s": round(now - self.reset_at, 3),
            "total": self.total.as_dict(),
            "keys": {k: s.as_dict() for k, s in sorted(self.keys.items())},
            "deployments": {k: s.as_dict() for k, s in sorted(self.deployments.items())},
            "models": {k: s.as_dict() for k, s in sorted(self.models.items())},
            "status": {str(code): n for code, n in sorted(self.status.items())},
        }


__all__ = ["COUNTER_FIELDS", "RouteStats", "SlidingWindow", "Stats", "TOKEN_PERIOD", "TokenWindow"]
