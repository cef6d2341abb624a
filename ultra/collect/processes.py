"""How many shard processes a run starts and which shards each runs: by the request
rate the shards can drive and what a request costs in CPU (`ultra plan` shows the choice).
"""

from __future__ import annotations

import math
import os

import msgspec

from ultra.collect.plan import Plan, Shard

# Before a route has answered (`ultra plan`), a request is taken to last this long: a chat
# completion seldom comes back in under a second. `ultra run` uses each route's preflight.
ASSUMED_LATENCY_S = 1.0
MIN_LATENCY_S = 0.001  # a loopback answer in microseconds drives no more than this


def offered_rps(shard: Shard, latency: float | None = None) -> float:
    """The request rate a shard can drive: its qps limit, or its workers each sending one
    request after another of `latency` seconds (assumed 1 s), whichever binds."""
    per_worker = 1.0 / max(MIN_LATENCY_S, latency if latency is not None else ASSUMED_LATENCY_S)
    return min(shard.qps, shard.workers * per_worker)


def assign(shards: list[Shard], processes: int,
           latency: dict[str, float] | None = None) -> list[list[Shard]]:
    """The busiest work first onto the least-loaded process, balanced by the request rate
    (a process's CPU goes per request), then by planned tests. Shards that share a key
    budget travel together: their pacer lives in one process."""
    units: dict[str, list[Shard]] = {}
    for s in shards:
        units.setdefault(s.shared_limit.name if s.shared_limit else s.shard_id, []).append(s)
    seconds = latency or {}

    def load(unit: list[Shard]) -> tuple[float, int]:
        return sum(offered_rps(s, seconds.get(s.shard_id)) for s in unit), sum(len(s.tests) for s in unit)

    groups: list[list[Shard]] = [[] for _ in range(max(1, processes))]
    loads = [(0.0, 0)] * len(groups)
    for unit in sorted(units.values(), key=load, reverse=True):
        i = loads.index(min(loads))
        groups[i].extend(unit)
        rps, tests = load(unit)
        loads[i] = (loads[i][0] + rps, loads[i][1] + tests)
    return [g for g in groups if g]


# What a request costs a shard process in CPU (client, executor, event: calibrated with
# tools/bench_dispatch.py --seed-load, docs/benchmarks.md: 0.69 ms on 2026-12-04 with the
# httptools parser, up to ~1 ms on a slow day), and the share of a core one is planned to
# use (the rest: bursts, the event writer, the parent): 700 requests/s each.
CPU_PER_REQUEST_S = 0.0010
PROCESS_CPU_SHARE = 0.7


class ProcessChoice(msgspec.Struct, frozen=True):
    """How many shard processes a run starts by default, and why."""

    processes: int
    offered_rps: float  # what the shards' workers can drive (within their qps)
    cpu_per_request_ms: float
    measured: bool  # from the routes' preflight latency (else ASSUMED_LATENCY_S)

    def line(self) -> str:
        basis = "the routes' preflight latency" if self.measured else \
            f"an assumed {ASSUMED_LATENCY_S:g} s per request"
        return (f"{self.processes} shard process{'es' if self.processes != 1 else ''}:"
                f" {self.offered_rps:,.0f} requests/s offered at {basis},"
                f" {self.cpu_per_request_ms:g} ms of CPU each (--processes sets it)")


def choose_processes(plan: Plan, latency: dict[str, float] | None = None) -> ProcessChoice:
    """Shard processes for the plan's load: the CPU its offered rate costs over the share
    of a core one process is given; at least 1, at most one per CPU (and per shard). A
    small run starts one process; a fast server with many workers gets more."""
    latency = latency or {}
    offered = sum(offered_rps(s, latency.get(s.shard_id)) for s in plan.shards)
    cpus = math.ceil(offered * CPU_PER_REQUEST_S / PROCESS_CPU_SHARE - 1e-9)
    n = max(1, min(os.cpu_count() or 1, len(plan.shards), cpus))
    return ProcessChoice(processes=n, offered_rps=offered,
                         cpu_per_request_ms=CPU_PER_REQUEST_S * 1000, measured=bool(latency))


def needed_processes(plan: Plan, latency: dict[str, float] | None = None) -> int:
    return choose_processes(plan, latency).processes


__all__ = ["assign", "ASSUMED_LATENCY_S", "choose_processes", "CPU_PER_REQUEST_S",
           "MIN_LATENCY_S", "needed_processes", "offered_rps", "PROCESS_CPU_SHARE",
           "ProcessChoice"]
