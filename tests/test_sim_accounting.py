"""The simulator's window arithmetic against brute force, on synthetic clocks."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from ultra.sim.accounting import RouteStats, SlidingWindow

# Gaps between arrivals in whole milliseconds (ties on a window's edge included).
gaps = st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=60)


def times_of(gap_list: list[int]) -> list[float]:
    return [t / 1000 for t in itertools.accumulate(gap_list)]


@given(gaps)
def test_max_per_second_is_the_busiest_half_open_second(gap_list: list[int]) -> None:
    times = times_of(gap_list)
    stats = RouteStats()
    for t in times:
        stats.arrive(t)
        stats.in_flight -= 1
    # same float boundary as the server: a window is (end - 1.0, end]
    brute = max(sum(1 for s in times if end - 1.0 < s <= end) for end in times)
    assert stats.max_per_second == brute
    assert stats.requests == len(times)


@given(gaps, st.sampled_from([0.5, 1.0, 3.0, 7.5, 20.0]))
def test_sliding_window_never_admits_more_than_its_rate(gap_list: list[int], rps: float) -> None:
    window = SlidingWindow(rps)
    admitted: list[float] = []
    refused: list[float] = []
    for t in times_of(gap_list):
        if window.is_full(t):
            refused.append(t)
        else:
            window.take(t)
            admitted.append(t)
    period = 1.0 if rps >= 1 else 1.0 / rps
    capacity = int(rps) if rps >= 1 else 1

    def in_window(end: float) -> int:
        return sum(1 for s in admitted if end - period < s <= end)

    assert all(in_window(end) <= capacity for end in admitted)
    # and no stingier than that: every refusal found a full window
    assert all(in_window(t) == capacity for t in refused)


def test_reset_keeps_what_is_in_flight() -> None:
    stats = RouteStats()
    stats.arrive(0.0)
    stats.arrive(0.1)
    stats.in_flight -= 1
    stats.reset()
    assert stats.requests == 0 and stats.in_flight == 1 and stats.max_in_flight == 1
