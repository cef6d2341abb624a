"""`tools/bench_dispatch.py --peers`: ultra's own shard process and two peers under the
same load, side by side in one run, so each figure is also a ratio.

At each simulator latency (zero and 200 ms, constant) and 128 connections:

- `ultra`: one shard process of 128 workers running real workflow tests (events and
  transcripts committed to a real SQLite log), in this process, for `seconds`;
- `httpx`: a bare loop of 128 trio tasks posting the first-turn request on pools of
  `CONNECTIONS_PER_CLIENT` (`httpx.AsyncClient.post`);
- `raw`: 128 trio socket streams, each a keep-alive HTTP/1.1 connection sending the same
  request bytes and reading the reply by its Content-Length (what a client that does
  nothing else costs).

Each row: requests/s, client CPU per request (process time over the window, every thread
included) and, beside ultra's, its ratios to the peers; at 200 ms the cap is
connections / latency. The window starts `WARMUP_S` in: the first round of 128 requests
(no reply for one latency) and ultra's start are left out, so a figure is the steady rate
(counted from the start, a 10 s window lost ~3 % of the cap to the first round alone).
The simulator runs in its own process on the same cores; its CPU share of one core over
each window is printed too (near 1.0 it, not the client, bounds a figure).
"""

from __future__ import annotations

import time
from pathlib import Path
from tempfile import TemporaryDirectory

import trio

from ultra.sim.config import Latency, SimConfig
from ultra.sim.process import SimProcess

CONNECTIONS = 128


def _cpu_of(pid: int) -> float:
    import os

    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WARMUP_S = 2.0  # the first round of connections (and ultra's start) stay out of each figure

Mark = tuple[int, float, float, float]  # requests so far, client CPU, wall clock, simulator CPU


def _mark(done: int, sim_pid: int) -> Mark:
    return done, time.process_time(), time.perf_counter(), _cpu_of(sim_pid)


def _row(warm: Mark, end: Mark) -> dict:
    """The figures of the window between two marks: after the warm-up, to the end."""
    done, cpu, wall, sim_cpu = (b - a for a, b in zip(warm, end))
    return dict(requests=done, rps=round(done / wall, 1),
                cpu_ms_per_request=round(1000 * cpu / max(1, done), 3),
                sim_cpu_share=round(sim_cpu / wall, 3))


def raw(url: str, body: bytes, sim_pid: int, *, connections: int, seconds: float) -> dict:
    from bench_sim import raw_client

    warm: list[Mark] = []

    async def main() -> Mark:
        done = await raw_client(url, WARMUP_S + seconds, connections, body=body, key="sim-key-0",
                                warmup=WARMUP_S, at_warm=lambda n: warm.append(_mark(n, sim_pid)))
        return _mark(done, sim_pid)

    end = trio.run(main)
    return _row(warm[0], end)


def httpx_loop(url: str, body: bytes, sim_pid: int, *, connections: int, seconds: float) -> dict:
    import httpx

    from ultra.collect.client import CONNECTIONS_PER_CLIENT

    async def main() -> tuple[Mark, Mark]:
        per = CONNECTIONS_PER_CLIENT
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        headers = {"authorization": "Bearer sim-key-0", "content-type": "application/json"}
        clients = [httpx.AsyncClient(limits=limits, headers=headers, timeout=None)
                   for _ in range(-(-connections // per))]
        done = 0
        stop = trio.current_time() + WARMUP_S + seconds
        warm: list[Mark] = []

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal done
            while trio.current_time() < stop:
                r = await client.post(f"{url}/v1/chat/completions", content=body)
                r.raise_for_status()
                done += 1

        async def mark_warm() -> None:
            await trio.sleep(WARMUP_S)
            warm.append(_mark(done, sim_pid))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(mark_warm)
            for i in range(connections):
                nursery.start_soon(worker, clients[i % len(clients)])
        end = _mark(done, sim_pid)
        for c in clients:
            await c.aclose()
        return warm[0], end

    return _row(*trio.run(main))


def ultra_shard(url: str, sim_pid: int, *, workers: int, seconds: float) -> dict:
    from bench_dispatch import shard_plan

    from ultra.collect.shard_process import ChildJob, run_process

    plan = shard_plan(url, workers=workers, qps=1e6, tests=200_000)  # never runs dry
    marks: list[Mark] = []  # at each of the shard's progress reports
    with TemporaryDirectory() as tmp:
        job = ChildJob(run_id="peers", db=str(Path(tmp) / "events.db"), suite="workflow",
                       tasks=None, shards=plan.shards)

        async def main() -> float:
            t0 = time.perf_counter()
            with trio.move_on_after(WARMUP_S + seconds):
                await run_process(job, lambda snaps: marks.append(
                    _mark(sum(s.requests for s in snaps), sim_pid)))
            return t0

        t0 = trio.run(main)
    warm = next(m for m in marks if m[2] - t0 >= WARMUP_S)
    return _row(warm, marks[-1])


def peers(body: bytes, *, seconds: float) -> dict:
    out: dict = {"connections": CONNECTIONS, "seconds": seconds}
    for latency_ms in (0, 200):
        with SimProcess(SimConfig(latency=Latency(median_ms=latency_ms))) as sim:
            rows = {
                "ultra": ultra_shard(sim.url, sim.pid, workers=CONNECTIONS, seconds=seconds),
                "httpx": httpx_loop(sim.url, body, sim.pid, connections=CONNECTIONS, seconds=seconds),
                "raw": raw(sim.url, body, sim.pid, connections=CONNECTIONS, seconds=seconds),
            }
        u = rows["ultra"]
        for peer in ("httpx", "raw"):
            p = rows[peer]
            u[f"cpu_vs_{peer}"] = round(u["cpu_ms_per_request"] / max(1e-9, p["cpu_ms_per_request"]), 2)
            u[f"rps_vs_{peer}"] = round(u["rps"] / max(1e-9, p["rps"]), 3)
        if latency_ms:
            cap = CONNECTIONS / (latency_ms / 1000)
            for r in rows.values():
                r["vs_cap"] = round(r["rps"] / cap, 3)
        out[f"latency_{latency_ms}ms"] = rows
    return out


__all__ = ["peers"]
