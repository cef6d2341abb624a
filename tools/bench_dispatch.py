"""Dispatch benchmark: ultra's shard executor against a bare trio + httpx loop.

Against the loopback simulator at zero latency (a real server in its own process) it
prints one JSON line with:

- `executor_rps` / `bare_rps` / `ratio`: requests per second of one shard (workflow tests,
  events committed to a real SQLite log) and of a bare loop posting the same first-turn
  request, at the same concurrency (target ratio >= 0.7);
- `qps`: achieved/limit at 20, 100 and 300 qps (the simulator's busiest 1 s window too;
  target >= 0.95 and never above the limit + 1);
- `sweep`, `max_*`: the highest rate one shard process sustains (unlimited qps, 8 to 128
  workers), beside the bare client's.

It asserts nothing about time. Usage: python tools/bench_dispatch.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ultra.config import Config, ModelConfig, ProviderConfig  # noqa: E402
from ultra.plan import Selection, make_plan  # noqa: E402
from ultra.runner import ChildJob, run_process  # noqa: E402
from ultra.sim.config import SimConfig  # noqa: E402
from ultra.sim.process import SimProcess  # noqa: E402
from ultra.suites import ChatResponse, get_suite  # noqa: E402

MODEL = "sim-strong"


class _Captured(Exception):
    pass


class _Recorder:
    """A ChatModel that captures the first request of a test and stops it."""

    body: dict = {}

    async def complete(self, messages, tools) -> ChatResponse:
        _Recorder.body = {"model": MODEL, "messages": messages, **({"tools": tools} if tools else {})}
        raise _Captured


def first_turn_body(spec) -> bytes:
    suite = get_suite("workflow")
    try:
        trio.run(lambda: suite.run(spec, _Recorder()))
    except _Captured:
        pass
    return msgspec.json.encode(_Recorder.body)


def shard_plan(url: str, *, workers: int, qps: float, tests: int):
    config = Config(
        providers={"sim": ProviderConfig(kind="sim", shape="openai", keys=1, url=url)},
        models={MODEL: ModelConfig(provider="sim", strategy="single", workers=workers, qps=qps)},
    )
    suite = get_suite("workflow")
    per_cell = max(1, tests // (len(suite.task_types) * 2))
    sel = Selection(suite="workflow", models=[MODEL], prompt_types=["baseline", "optimal"],
                    difficulties=["easy"], task_types=list(suite.task_types),
                    tool_success_rates=[0.9], num_instances=per_cell)
    return make_plan(config, suite, sel, completed=set(), sim_url=url)


def run_executor(url: str, *, workers: int, qps: float, tests: int) -> tuple[float, int, float]:
    """(requests/s, requests, seconds) of one shard process running real workflow tests."""
    plan = shard_plan(url, workers=workers, qps=qps, tests=tests)
    snapshots: list = []
    with tempfile.TemporaryDirectory() as tmp:
        job = ChildJob(run_id="bench", db=str(Path(tmp) / "events.db"), suite="workflow",
                       tasks=None, shards=plan.shards)
        t0 = time.perf_counter()
        trio.run(run_process, job, snapshots.append)
        elapsed = time.perf_counter() - t0
    requests = sum(s.requests for s in snapshots[-1])
    return requests / elapsed, requests, elapsed


def run_bare(url: str, body: bytes, *, workers: int, requests: int) -> float:
    """Requests/s of N tasks posting `body` on one httpx client: the physical reference."""
    done = 0

    async def main() -> float:
        nonlocal done
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        headers = {"authorization": "Bearer sim-key-0", "content-type": "application/json"}
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=None) as client:

            async def worker() -> None:
                nonlocal done
                while done < requests:
                    done += 1
                    r = await client.post(f"{url}/v1/chat/completions", content=body)
                    r.raise_for_status()
                    msgspec.json.decode(r.content)

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(worker)
            return done / (time.perf_counter() - t0)

    return trio.run(main)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="rough length of each QPS run")
    ap.add_argument("--workers", type=int, default=32)
    args = ap.parse_args()
    suite = get_suite("workflow")
    spec = shard_plan("http://x", workers=1, qps=1, tests=10).shards[0].tests[0]
    body = first_turn_body(spec)
    out: dict = {}
    with SimProcess(SimConfig()) as sim:
        ex_rps, ex_n, _ = run_executor(sim.url, workers=args.workers, qps=1e6, tests=600)
        bare = run_bare(sim.url, body, workers=args.workers, requests=max(ex_n, 2000))
        out.update(workers=args.workers, executor_rps=round(ex_rps, 1), bare_rps=round(bare, 1),
                   ratio=round(ex_rps / bare, 3))
        qps_rows = {}
        for qps in (20, 100, 300):
            sim.reset()
            # enough tests for ~`seconds` of traffic at this rate (about 4 turns a test)
            rps, n, elapsed = run_executor(sim.url, workers=64, qps=qps,
                                           tests=max(20, int(qps * args.seconds / 4)))
            busiest = sim.stats()["total"]["max_per_second"]
            qps_rows[str(qps)] = dict(achieved=round(rps, 1), ratio=round(rps / qps, 3),
                                      busiest_1s_window=busiest, requests=n,
                                      seconds=round(elapsed, 2))
        out["qps"] = qps_rows
        # The highest sustained rate: httpx's pool slows as it grows, so sweep the size.
        sweep = {}
        for workers in (8, 16, 32, 64, 128):
            ex, n, _ = run_executor(sim.url, workers=workers, qps=1e6, tests=600)
            sweep[str(workers)] = dict(executor_rps=round(ex, 1),
                                       bare_rps=round(run_bare(sim.url, body, workers=workers,
                                                               requests=max(n, 2000)), 1))
        out["sweep"] = sweep
        out.update(max_executor_rps=max(r["executor_rps"] for r in sweep.values()),
                   max_bare_rps=max(r["bare_rps"] for r in sweep.values()))
    print(json.dumps(out))
    del suite


if __name__ == "__main__":
    main()
