"""The shard pacers on trio's virtual clock: requests counted when sent, whatever the
scheduling delay; tokens per 10 s window; back-off on 429, recovery; rate-limit headers."""

from __future__ import annotations

import email.utils
import time
from collections import deque

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import random

from ultra.collect.limits import WINDOW_MARGIN, RateLimiter, TokenBudget
from ultra.collect.rate_headers import (
    NO_RATE_HEADERS,
    RateHeaders,
    parse_duration,
    parse_retry_after,
    PROVIDER_WINDOW,
    read_rate_headers,
    requests_pace,
    requests_pause,
    tokens_pace,
    tokens_pause,
    wait_after_429,
)


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
                limiter.sent()
                starts.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)

    run_virtual(main)
    starts.sort()
    assert max_in_window(starts) <= qps  # half-open windows: exactly the limit, burst 1
    # and the limit is reached: starts are spaced (1 + margin)/qps apart, no slower
    assert starts[-1] - starts[0] <= (len(starts) - 1) * (1 + WINDOW_MARGIN) / qps + 1e-6


@settings(max_examples=30, deadline=None)
@given(qps=st.integers(1, 200), workers=st.integers(1, 48), max_delay=st.floats(0, 0.8),
       seed=st.integers(0, 2**32), abandon=st.floats(0, 0.3))
def test_sends_never_exceed_qps_in_a_window_whatever_the_delay(qps, workers, max_delay, seed, abandon):
    """Between its release and its bytes going out a request may wait (a busy loop, a slow
    connection): the server counts the sends, and so does the pacer. Some never go out."""
    rng = random.Random(seed)
    sends: list[float] = []

    async def main():
        limiter = RateLimiter(qps)
        n = qps * 3
        released = 0

        async def worker():
            nonlocal released
            while released < n:
                await limiter.acquire()
                released += 1
                await trio.sleep(rng.uniform(0, max_delay))
                if rng.random() < abandon:
                    limiter.abandon()
                else:
                    limiter.sent()
                    sends.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)

    run_virtual(main)
    sends.sort()
    assert max_in_window(sends) <= qps  # exact, on the server's clock: 1 s windows


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
                limiter.sent()
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
            limiter.sent()
        limiter.on_429(retry_after=1.0)
        limiter.on_429(retry_after=1.0)  # a burst of 429s is one signal
        assert limiter.rate == 50
        await limiter.acquire()
        limiter.sent()
        assert trio.current_time() - t0 >= 1.0  # Retry-After was honoured
        limiter.on_429(retry_after=None)
        await trio.sleep(0.6)
        limiter.on_429(retry_after=None)
        low = limiter.rate
        assert low == 12.5
        while limiter.rate < limiter.limit:
            await limiter.acquire()
            limiter.sent()
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


@settings(max_examples=20, deadline=None)
@given(tpm=st.integers(600, 600_000), workers=st.integers(1, 16), seed=st.integers(0, 2**32))
def test_tokens_never_exceed_a_sixth_of_tpm_in_any_10s_window(tpm, workers, seed):
    """The estimate is spent before a request and corrected with `usage` after; the usage
    charged lies at or below the estimate, as it does for a cap on completion tokens."""
    rng = random.Random(seed)
    charged: list[tuple[float, int]] = []
    capacity = tpm / 6

    async def main():
        budget = TokenBudget(tpm)
        deadline = 45.0

        async def worker():
            while trio.current_time() < deadline:
                estimate = rng.randint(1, max(1, int(capacity // 3)))
                spend = await budget.acquire(estimate)
                at = trio.current_time()
                await trio.sleep(rng.uniform(0, 2))
                used = rng.randint(0, estimate)
                budget.correct(spend, used)
                charged.append((at, used))

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)

    run_virtual(main)
    charged.sort()
    j, total, best = 0, 0, 0
    for t, n in charged:
        total += n
        while charged[j][0] <= t - 10.0:
            total -= charged[j][1]
            j += 1
        best = max(best, total)
    assert best <= capacity
    assert sum(n for _, n in charged) > 0


def test_a_correction_frees_tokens_at_once():
    async def main():
        budget = TokenBudget(600)  # 100 tokens per 10 s
        spend = await budget.acquire(90)
        t0 = trio.current_time()
        budget.correct(spend, 10)  # the answer used less than estimated
        await budget.acquire(80)
        assert trio.current_time() == t0  # no wait: 10 + 80 fit
        await budget.acquire(50)
        assert trio.current_time() >= t0 + 10  # this one waits for the window to move on

    run_virtual(main)


def test_duration_forms_of_the_reset_headers():
    assert parse_duration("1s") == 1.0
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("20ms") == 0.02
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("2.5") == 2.5
    assert parse_duration("soon") is None and parse_duration("5 s") is None
    assert parse_duration(None) is None


def test_what_a_429_says_to_wait():
    h = read_rate_headers({"retry-after-ms": "1500", "retry-after": "2"})
    assert wait_after_429(h) == 1.5  # the finer one first, as Azure sends both
    assert wait_after_429(read_rate_headers({"retry-after": "2"})) == 2.0
    h = read_rate_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s",
                           "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"})
    assert wait_after_429(h) == 360.0
    # a limit that is not exhausted does not make us wait its whole reset
    h = read_rate_headers({"x-ratelimit-remaining-requests": "40", "x-ratelimit-reset-requests": "6m0s",
                           "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"})
    assert wait_after_429(h) == 0.02
    assert wait_after_429(RateHeaders()) is None


def test_slowing_down_before_a_429():
    low = read_rate_headers({"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0",
                             "x-ratelimit-reset-requests": "250ms"})
    assert requests_pause(low) == 0.25
    plenty = read_rate_headers({"x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4999",
                                "x-ratelimit-reset-requests": "12ms"})
    assert requests_pause(plenty) == 0.0
    tokens = read_rate_headers({"x-ratelimit-limit-tokens": "100000", "x-ratelimit-remaining-tokens": "300",
                                "x-ratelimit-reset-tokens": "1s"})
    assert tokens_pause(tokens, next_tokens=500) == 1.0  # the next request would not fit
    assert tokens_pause(read_rate_headers({"x-ratelimit-remaining-tokens": "90000",
                                           "x-ratelimit-reset-tokens": "1s"}), next_tokens=500) == 0.0


def test_the_429_cool_down_holds_the_rate_then_climbs_by_half_a_second():
    """After the last 429 the rate stays down for the cool-down (1 s), then climbs by 50 %
    at most once a second, up to the limit. A 429 inside the burst window (0.5 s) does not
    halve again but restarts the cool-down."""
    seen: list[tuple[float, float]] = []

    async def main():
        limiter = RateLimiter(100)
        await limiter.acquire()
        limiter.sent()
        t0 = trio.current_time()
        limiter.on_429(retry_after=None)
        assert limiter.rate == 50
        while trio.current_time() - t0 < 0.3:
            await limiter.acquire()
            limiter.sent()
            seen.append((trio.current_time() - t0, limiter.rate))
        limiter.on_429(retry_after=None)  # 0.3 s later: the same burst, cool-down restarts
        assert limiter.rate == 50
        while trio.current_time() - t0 < 4.0:
            await limiter.acquire()
            limiter.sent()
            seen.append((trio.current_time() - t0, limiter.rate))

    run_virtual(main)
    assert all(rate == 50 for t, rate in seen if t < 1.3)  # held through the cool-down
    up = [t for t, rate in seen if rate > 50]
    assert up and 1.3 <= up[0] < 1.4  # climbs as soon as it ends
    assert sorted({rate for _, rate in seen}) == [50, 75, 100]  # x1.5, capped at the limit
    t75, t100 = (min(t for t, rate in seen if rate == r) for r in (75, 100))
    assert 1.0 <= t100 - t75 < 1.1  # one step a second


LITELLM_KEY = {"x-ratelimit-api_key-limit-requests": "20", "x-ratelimit-api_key-remaining-requests": "4",
               "x-ratelimit-api_key-limit-tokens": "10000", "x-ratelimit-api_key-remaining-tokens": "2000"}


def test_gateway_headers_are_read_as_limits_without_reset():
    h = read_rate_headers(LITELLM_KEY)
    assert (h.key_limit_requests, h.key_remaining_requests, h.key_limit_tokens, h.key_remaining_tokens) \
        == (20, 4, 10000, 2000)
    assert h.remaining_requests is None and h.reset_requests is None
    model = read_rate_headers({"x-ratelimit-limit-requests": "30", "x-ratelimit-remaining-requests": "3"})
    assert (model.limit_requests, model.remaining_requests, model.reset_requests) == (30, 3, None)
    assert read_rate_headers({"content-type": "application/json"}) is NO_RATE_HEADERS
    assert read_rate_headers({"retry-after": "60"}) == RateHeaders(retry_after=60.0)


def test_a_limit_without_reset_spreads_what_is_left_over_a_window():
    w = PROVIDER_WINDOW
    h = read_rate_headers(LITELLM_KEY)
    assert requests_pace(h) == w / 5  # 4 of 20 left: below half, one per W / (R + 1)
    assert tokens_pace(h, 500) == w * 500 / 2500  # 2000 tokens left: 4 requests' worth
    key = {"x-ratelimit-api_key-limit-requests": "20"}
    assert requests_pace(read_rate_headers(key | {"x-ratelimit-api_key-remaining-requests": "10"})) == 0.0
    assert requests_pace(read_rate_headers(key | {"x-ratelimit-api_key-remaining-requests": "0"})) == w
    # a model limit without reset, with and without its limit said
    assert requests_pace(read_rate_headers({"x-ratelimit-limit-requests": "30",
                                            "x-ratelimit-remaining-requests": "2"})) == w / 3
    assert requests_pace(read_rate_headers({"x-ratelimit-remaining-requests": "3"})) == w / 4
    assert requests_pace(read_rate_headers({"x-ratelimit-remaining-requests": "400"})) == 0.0
    # the key's and the model's limits together: the tighter one
    both = read_rate_headers(LITELLM_KEY | {"x-ratelimit-remaining-requests": "1"})
    assert requests_pace(both) == w / 2
    # a limit with a reset pauses until it (requests_pause), it is not paced
    openai = read_rate_headers({"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0",
                                "x-ratelimit-reset-requests": "250ms"})
    assert requests_pace(openai) is None and requests_pause(openai) == 0.25
    # Azure's -1 means "not counted"; no header means nothing said
    assert tokens_pace(read_rate_headers({"x-ratelimit-limit-tokens": "-1",
                                          "x-ratelimit-remaining-tokens": "-1"}), 500) is None
    assert requests_pace(NO_RATE_HEADERS) is None and tokens_pace(NO_RATE_HEADERS, 10) is None


@given(st.integers(1, 2000), st.booleans())
@settings(max_examples=60, deadline=None)
def test_pacing_by_the_headers_never_runs_a_window_dry(limit, fixed):
    """One request at a time against a server allowing `limit` per 60 s (sliding or fixed
    windows) that names no reset: following `requests_pace` it never sees a refusal, and
    still sends at least half the limit per window."""
    w = PROVIDER_WINDOW
    t, start, window, refused, sent = 0.0, 0.0, deque(), 0, 0
    while t < 10 * w:
        if fixed and t - start >= w:
            start += w * ((t - start) // w)
            window.clear()
        while not fixed and window and window[0] <= t - w:
            window.popleft()
        if len(window) >= limit:
            refused += 1
            break
        window.append(t)
        sent += 1
        h = read_rate_headers({"x-ratelimit-api_key-limit-requests": str(limit),
                               "x-ratelimit-api_key-remaining-requests": str(limit - len(window))})
        t += max(requests_pace(h), 0.001)
    assert refused == 0
    assert sent >= limit * 10 * 0.5 - 1


def test_pace_spaces_the_slots_and_is_held_for():
    async def main():
        limiter = RateLimiter(100)
        t0 = trio.current_time()
        await limiter.acquire()
        limiter.sent()
        limiter.pace(2.0)
        assert 1.99 <= limiter.held_for() <= 2.0
        times = []
        for _ in range(3):
            await limiter.acquire()
            limiter.sent()
            times.append(trio.current_time() - t0)
        assert [round(t, 2) for t in times] == [2.0, 4.0, 6.0]
        limiter.pace(0.0)  # plenty left again: back to the rate at once
        await limiter.acquire()
        limiter.sent()
        assert trio.current_time() - t0 < 6.02 + 0.02
        assert limiter.held_for() == 0.0
        limiter.on_429(60.0)
        assert 59.9 < limiter.held_for() <= 60.0

    run_virtual(main)
    assert RateLimiter(5).held_for() == 0.0  # outside trio


def test_the_window_of_requests_in_flight_halves_once_per_round_and_climbs_back():
    """On trio's virtual clock: a burst of timeouts of requests sent before the cut is one
    signal; each answer widens the window by 1/window; in flight never exceeds the window."""
    from trio.testing import MockClock

    from ultra.collect.limits import Concurrency

    async def main() -> None:
        w = Concurrency(8)
        sent = trio.current_time()
        for _ in range(8):  # eight requests sent together, all timing out
            await w.acquire()
        await trio.sleep(1)
        for _ in range(8):
            w.timed_out(sent)
            w.release()
        assert w.slots == 4 and w.low == 4  # one cut for the whole round
        await trio.sleep(1)
        w.timed_out(trio.current_time() - 0.5)  # sent after the cut: a new signal
        assert w.slots == 2
        for _ in range(3):
            w.timed_out(trio.current_time())
        assert w.slots == 1 and w.low == 1  # never below one
        peak = 0

        async def one() -> None:
            nonlocal peak
            await w.acquire()
            assert w.in_flight <= w.slots
            peak = max(peak, w.in_flight)
            await trio.sleep(0.1)
            w.answered()
            w.release()

        async with trio.open_nursery() as n:
            for _ in range(40):
                n.start_soon(one)
        assert peak <= 8 and w.slots > 1  # answers widened it again ...
        answers = 40
        while w.slots < 8:
            w.answered()
            answers += 1
        assert answers < 100 and w.slots == 8  # ... about one slot per window of answers

    trio.run(main, clock=MockClock(autojump_threshold=0))
