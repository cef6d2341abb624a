"""The shard pacer on trio's virtual clock: exact spacing, back-off on 429, recovery."""

from __future__ import annotations

import email.utils
import time

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from ultra.limits import WINDOW_MARGIN, RateLimiter, parse_retry_after


def max_in_window(times: list[float], window: float = 1.0) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def run_virtual(fn):
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=25, deadline=None)
@given(qps=st.integers(1, 300), workers=st.integers(1, 64))
def test_no_one_second_window_exceeds_qps(qps, workers):
    starts: list[float] = []

    async def main():
        limiter = RateLimiter(qps)
        n = qps * 3

        async def worker():
            while len(starts) < n:
                await limiter.acquire()
                starts.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)

    run_virtual(main)
    starts.sort()
    assert max_in_window(starts) <= qps  # half-open windows: exactly the limit, burst 1
    # and the limit is reached: starts are spaced (1 + margin)/qps apart, no slower
    assert starts[-1] - starts[0] <= (len(starts) - 1) * (1 + WINDOW_MARGIN) / qps + 1e-6


def test_late_wakeups_never_crowd_a_window():
    """A stalled loop: the first slots are released late, the later ones on time. Counting
    actual releases keeps every 1 s window within the limit anyway."""
    clock = trio.testing.MockClock()  # time moves only when we move it
    releases: list[float] = []

    async def main():
        limiter = RateLimiter(10)

        async def worker():
            while True:
                await limiter.acquire()
                releases.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(worker)
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(0.3)  # a 300 ms stall right at the start
            while trio.current_time() < 5:
                await trio.testing.wait_all_tasks_blocked()
                clock.jump(0.01)  # then a loop that keeps up
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)
    assert max_in_window(sorted(releases)) <= 10
    assert len(releases) >= 10 * 4  # and the stall cost little throughput


def test_429_backs_off_then_recovers():
    rates: list[tuple[float, float]] = []

    async def main():
        limiter = RateLimiter(100)
        t0 = trio.current_time()
        for _ in range(50):
            await limiter.acquire()
        limiter.on_429(retry_after=1.0)
        limiter.on_429(retry_after=1.0)  # a burst of 429s is one signal
        assert limiter.rate == 50
        await limiter.acquire()
        assert trio.current_time() - t0 >= 1.0  # Retry-After was honoured
        limiter.on_429(retry_after=None)
        await trio.sleep(0.6)
        limiter.on_429(retry_after=None)
        low = limiter.rate
        assert low == 12.5
        while limiter.rate < limiter.limit:
            await limiter.acquire()
            rates.append((trio.current_time() - t0, limiter.rate))
        assert rates[-1][1] == 100

    run_virtual(main)
    values = [r for _, r in rates]
    assert values == sorted(values)  # climbs monotonically once 429s stop


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 5, usegmt=True)
    assert 3.5 <= parse_retry_after(date, now=now) <= 5.0
    assert parse_retry_after(email.utils.formatdate(now - 100, usegmt=True), now=now) == 0.0
