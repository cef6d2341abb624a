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
connections / latency. The simulator runs in its own process on the same cores; its CPU
share of one core over each window is printed too (near 1.0 it, not the client, bounds a
figure).
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


def _row(done: int, cpu: float, wall: float, sim_cpu: float) -> dict:
    return dict(requests=done, rps=round(done / wall, 1),
                cpu_ms_per_request=round(1000 * cpu / max(1, done), 3),
                sim_cpu_share=round(sim_cpu / wall, 3))


def raw(url: str, body: bytes, sim_pid: int, *, connections: int, seconds: float) -> dict:
    from bench_sim import raw_client

    async def main() -> tuple[int, float, float, float]:
        c0, t0, s0 = time.process_time(), time.perf_counter(), _cpu_of(sim_pid)
        done = await raw_client(url, seconds, connections, body=body, key="sim-key-0")
        return done, time.process_time() - c0, time.perf_counter() - t0, _cpu_of(sim_pid) - s0

    return _row(*trio.run(main))


def httpx_loop(url: str, body: bytes, sim_pid: int, *, connections: int, seconds: float) -> dict:
    import httpx

    from ultra.collect.client import CONNECTIONS_PER_CLIENT

    async def main() -> tuple[int, float, float, float]:
        per = CONNECTIONS_PER_CLIENT
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        headers = {"authorization": "Bearer sim-key-0", "content-type": "application/json"}
        clients = [httpx.AsyncClient(limits=limits, headers=headers, timeout=None)
                   for _ in range(-(-connections // per))]
        done = 0
        stop = trio.current_time() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal done
            while trio.current_time() < stop:
                r = await client.post(f"{url}/v1/chat/completions", content=body)
                r.raise_for_status()
                done += 1

        c0, t0, s0 = time.process_time(), time.perf_counter(), _cpu_of(sim_pid)
        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(worker, clients[i % len(clients)])
        out = done, time.process_time() - c0, time.perf_counter() - t0, _cpu_of(sim_pid) - s0
        for c in clients:
            await c.aclose()
        return out

    return _row(*trio.run(main))


def ultra_shard(url: str, sim_pid: int, *, workers: int, seconds: float) -> dict:
    from bench_dispatch import shard_plan

    from ultra.collect.shard_process import ChildJob, run_process

    plan = shard_plan(url, workers=workers, qps=1e6, tests=200_000)  # never runs dry
    snapshots: list = []
    with TemporaryDirectory() as tmp:
        job = ChildJob(run_id="peers", db=str(Path(tmp) / "events.db"), suite="workflow",
                       tasks=None, shards=plan.shards)

        async def main() -> tuple[float, float, float]:
            c0, t0, s0 = time.process_time(), time.perf_counter(), _cpu_of(sim_pid)
            with trio.move_on_after(seconds):
                await run_process(job, snapshots.append)
            return time.process_time() - c0, time.perf_counter() - t0, _cpu_of(sim_pid) - s0

        cpu, wall, sim_cpu = trio.run(main)
    return _row(sum(s.requests for s in snapshots[-1]), cpu, wall, sim_cpu)


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
