"""Dispatch benchmark: ultra's shard executor against a bare trio + httpx loop.

Against the loopback simulator at zero latency (a real server in its own process) it
prints one JSON line with:

- `executor_rps` / `bare_rps` / `ratio`: requests per second of one shard (workflow tests,
  events committed to a real SQLite log) and of a bare loop posting the same first-turn
  request, at the same concurrency (target ratio >= 0.7);
- `qps`: achieved/limit at 20, 100 and 300 qps and the busiest 1 s window as the
  simulator counts arrivals, measured while `--burners` (default 2) CPU burner processes
  load the machine (target: achieved/limit >= 0.95, the busiest window never above qps);
- `sweep`, `max_*`: the highest rate one shard process sustains (unlimited qps, 8 to 128
  workers), beside the bare client's.

It asserts nothing about time. Usage: python tools/bench_dispatch.py [--seconds 5]
[--burners 2] [--qps-only]

`--peers` runs one load three ways side by side (tools/peers.py): ultra's own shard process
at 128 workers, a bare httpx loop and raw trio sockets, at zero and 200 ms latency, each
with its client CPU per request, and ultra's ratios to both.

`--seed-load` measures the seed's full load instead (13 models of the four classes, 1,095
workers, simulator latency lognormal with median 1 s): achieved / offered requests per
second over a window after warm-up with `--processes` shard processes (offered: every
shard's min(qps, workers / median latency)), the client CPU per request of those
processes, each the median of `--runs` runs (with `ceiling_rps`, what a client that costs
nothing reaches at the latency's mean, and the simulator's own CPU per request and mean
residency, by Little's law: above the latency's mean, it waited for a core, and its CPU
share of one core over the window, `sim_cpu_share`); beside it
the same load with one pool per shard; and a bare loop of 128 tasks at 200 ms latency on
one `httpx.AsyncClient` of 128 connections, on pools of `CONNECTIONS_PER_CLIENT` through
`AsyncClient.post`, and on the same pools through ultra's `RouteClient` (h11 over trio
sockets, ultra/collect/http11.py): client CPU per request of each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ultra.config import Config, ModelConfig, ProviderConfig  # noqa: E402
from ultra.collect.plan import Selection, make_plan  # noqa: E402
from ultra.collect.processes import assign, offered_rps  # noqa: E402
from ultra.collect.shard_process import ChildJob, run_process  # noqa: E402
from ultra.sim.config import Latency, SimConfig  # noqa: E402
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
    return make_plan(config, suite, sel, completed=set(), bases=dict.fromkeys(config.providers, url))


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


# ---- --seed-load ---------------------------------------------------------------------

# The seed's load: (class, models, workers, qps) per shard. 5 x 3 x 2 + 3 x 3 x 100 + 3 x 5
# + 2 x 75 = 1,095 workers.
SEED_CLASSES = (("open-multikey", 5, 2, 10.0), ("open-azure", 3, 100, 200.0),
                ("closed-multikey", 3, 5, 10.0), ("closed-azure", 2, 75, 150.0))
SEED_LATENCY = Latency(median_ms=1000, spread_ms=300)


def seed_plan(url: str, instances: int):
    providers = {
        "gateway": ProviderConfig(kind="sim", shape="openai", keys=3, url=url),
        "azure": ProviderConfig(kind="sim", shape="azure", url=url),
        "closed": ProviderConfig(kind="sim", shape="openai", keys=1, url=url),
        "azure-closed": ProviderConfig(kind="sim", shape="azure", url=url),
    }
    provider_of = {"open-multikey": "gateway", "open-azure": "azure",
                   "closed-multikey": "closed", "closed-azure": "azure-closed"}
    # Deployments name their model through canonical_model, which knows the
    # simulator's named policies; the other routes may use any `sim-skill-N`.
    azure_names = iter(["sim-strong", "sim-good", "sim-medium"])
    models, skill = {}, 40
    for cls, count, workers, qps in SEED_CLASSES:
        for _ in range(count):
            name = next(azure_names) if cls == "open-azure" else f"sim-skill-{skill}"
            skill += 3
            models[name] = ModelConfig(provider=provider_of[cls], model_class=cls,
                                       workers=workers, qps=qps)
    config = Config(providers=providers, models=models)
    suite = get_suite("workflow")
    sel = Selection(suite="workflow", models=list(models), prompt_types=["baseline", "optimal"],
                    difficulties=["easy"], task_types=list(suite.task_types),
                    tool_success_rates=[0.9], num_instances=instances)
    return make_plan(config, suite, sel, completed=set(), bases=dict.fromkeys(config.providers, url))


def seed_child(url: str, db: str, processes: int, index: int, instances: int,
               per_client: int) -> None:
    import ultra.collect.client

    ultra.collect.client.CONNECTIONS_PER_CLIENT = per_client  # this benchmark's variable

    groups = assign(seed_plan(url, instances).shards, processes)
    job = ChildJob(run_id="bench-seed", db=db, suite="workflow", tasks=None, shards=groups[index])
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # measured already: stop at once
    trio.run(run_process, job, lambda snapshots: None)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Window(msgspec.Struct):
    """What a measurement window saw: requests the simulator accepted, seconds, CPU seconds
    of the client processes and of the simulator, and its last /stats."""

    requests: int
    seconds: float
    client_cpu: float
    sim_cpu: float
    stats: dict


def measure(sim, procs, warmup: float, window: float) -> Window:
    """Wait `warmup` seconds, then measure `window` seconds of the load, and stop `procs`."""
    try:
        time.sleep(warmup)
        r0, t0 = sim.stats()["total"]["accepted"], time.perf_counter()
        c0 = sum(_cpu_seconds(p.pid) for p in procs)
        s0 = _cpu_seconds(sim.pid)
        time.sleep(window)
        stats = sim.stats()
        r1, t1 = stats["total"]["accepted"], time.perf_counter()
        c1 = sum(_cpu_seconds(p.pid) for p in procs)
        s1 = _cpu_seconds(sim.pid)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    return Window(requests=r1 - r0, seconds=t1 - t0, client_cpu=c1 - c0, sim_cpu=s1 - s0,
                  stats=stats)


def seed_load(processes: int, warmup: float, window: float, per_client: int) -> dict:
    instances = 200  # enough tests that no shard runs dry within the window
    with SimProcess(SimConfig(latency=SEED_LATENCY)) as sim, tempfile.TemporaryDirectory() as tmp:
        plan = seed_plan(sim.url, instances)
        offered = sum(min(s.qps, s.workers / (SEED_LATENCY.median_ms / 1000)) for s in plan.shards)
        # A lognormal's mean is above its median: what the workers could do with a client
        # that costs nothing, the ceiling of achieved / offered.
        sigma = math.log1p(SEED_LATENCY.spread_ms / SEED_LATENCY.median_ms)
        mean_s = SEED_LATENCY.median_ms / 1000 * math.exp(sigma ** 2 / 2)
        ceiling = sum(min(s.qps, s.workers / mean_s) for s in plan.shards)
        db = str(Path(tmp) / "events.db")
        procs = [subprocess.Popen([sys.executable, __file__, "--seed-child", sim.url, db,
                                   str(processes), str(i), str(instances), str(per_client)])
                 for i in range(min(processes, len(plan.shards)))]
        w = measure(sim, procs, warmup, window)
        stats, n = w.stats, max(1, w.requests)
        achieved = w.requests / w.seconds
        return dict(processes=processes, connections_per_client=per_client, shards=len(plan.shards),
                    workers=sum(s.workers for s in plan.shards), offered_rps=round(offered, 1),
                    ceiling_rps=round(ceiling, 1),
                    # how `assign` shares the offered rate between the shard processes
                    process_offered_rps=[sum(map(offered_rps, g)) for g in assign(plan.shards, processes)],
                    # Little's law: how long a request stayed at the simulator (its mean
                    # latency is mean_s; more means the simulator waited for a core).
                    sim_residency_s=round(stats["total"]["in_flight"] / achieved, 3),
                    latency_mean_s=round(mean_s, 3),
                    achieved_rps=round(achieved, 1), achieved_vs_offered=round(achieved / offered, 3),
                    client_cpu_ms_per_request=round(1000 * w.client_cpu / n, 3),
                    sim_cpu_ms_per_request=round(1000 * w.sim_cpu / n, 3),
                    # of one core, over the window: near 1.0 the simulator, not the
                    # client, bounds the figure
                    sim_cpu_share=round(w.sim_cpu / w.seconds, 3),
                    sim_status=stats["status"], sim_in_flight=stats["total"]["in_flight"],
                    rejected=[m for part in ("models", "deployments", "keys") for m, c in stats[part].items() if c["rejected"]])


def bare_cpu(url: str, body: bytes, *, tasks: int, per_client: int, seconds: float,
             direct: bool = False) -> dict:
    """Client CPU per request of `tasks` tasks posting `body`, on pools of `per_client`:
    through `httpx.AsyncClient.post`, or (`direct`) through ultra's `RouteClient`
    (h11 over trio sockets, ultra/collect/http11.py)."""
    from ultra.collect.client import RouteClient
    from ultra.collect.plan import Route

    route = Route(url=f"{url}/v1/chat/completions", shape="openai", api_model=MODEL,
                  key_literal="sim-key-0")

    async def main() -> tuple[int, float, float]:
        n = -(-tasks // per_client)
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        headers = {"authorization": "Bearer sim-key-0", "content-type": "application/json"}
        clients = [RouteClient(route, per_client) if direct else
                   httpx.AsyncClient(limits=limits, headers=headers, timeout=None) for _ in range(n)]
        done = 0
        stop = trio.current_time() + seconds

        async def worker(client) -> None:
            nonlocal done
            while trio.current_time() < stop:
                if direct:
                    status, _, _ = await client.post(body)
                    assert status == 200
                else:
                    r = await client.post(route.url, content=body)
                    r.raise_for_status()
                done += 1

        c0, t0 = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(tasks):
                nursery.start_soon(worker, clients[i % n])
        c1, t1 = time.process_time(), time.perf_counter()
        for c in clients:
            await (c.__aexit__() if direct else c.aclose())
        return done, c1 - c0, t1 - t0

    done, cpu, wall = trio.run(main)
    return dict(clients=-(-tasks // per_client), per_client=per_client, direct=direct,
                rps=round(done / wall, 1), cpu_ms_per_request=round(1000 * cpu / max(1, done), 3))


def seed_main(args: argparse.Namespace) -> None:
    from ultra.collect.client import CONNECTIONS_PER_CLIENT

    out: dict = {"load_at_start": os.getloadavg()[0], "runs": args.runs}
    # ultra's split beside one pool per shard, interleaved run by run so load changes hit
    # both alike; each figure is the median of the runs.
    runs: dict[str, list[dict]] = {"seed_load": [], "seed_load_one_pool_per_shard": []}
    for _ in range(args.runs):
        runs["seed_load"].append(seed_load(args.processes, args.warmup, args.seconds,
                                           CONNECTIONS_PER_CLIENT))
        runs["seed_load_one_pool_per_shard"].append(
            seed_load(args.processes, args.warmup, args.seconds, 10**6))
    for name, rs in runs.items():
        med = dict(rs[0])
        for k in ("achieved_rps", "achieved_vs_offered", "client_cpu_ms_per_request", "sim_in_flight",
                  "sim_residency_s", "sim_cpu_ms_per_request", "sim_cpu_share"):
            med[k] = statistics.median(r[k] for r in rs)
        med["achieved_vs_offered_each_run"] = [r["achieved_vs_offered"] for r in rs]
        med["sim_status"] = rs[-1]["sim_status"]
        out[name] = med
    spec = next(shard_plan("http://x", workers=1, qps=1, tests=10).shards[0].tests.specs(get_suite("workflow")))
    body = first_turn_body(spec)
    with SimProcess(SimConfig(latency=Latency(median_ms=200, spread_ms=50))) as sim:
        out["bare_128"] = {
            "one_pool_of_128": bare_cpu(sim.url, body, tasks=128, per_client=128, seconds=args.seconds),
            f"pools_of_{CONNECTIONS_PER_CLIENT}": bare_cpu(
                sim.url, body, tasks=128, per_client=CONNECTIONS_PER_CLIENT, seconds=args.seconds),
            f"pools_of_{CONNECTIONS_PER_CLIENT}_direct": bare_cpu(
                sim.url, body, tasks=128, per_client=CONNECTIONS_PER_CLIENT, seconds=args.seconds,
                direct=True),
        }
    out["load_at_end"] = os.getloadavg()[0]
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="rough length of each QPS run")
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--burners", type=int, default=2, help="CPU burners during the qps runs")
    ap.add_argument("--qps-only", action="store_true", help="only the qps runs")
    ap.add_argument("--seed-load", action="store_true", help="the seed's full load (see above)")
    ap.add_argument("--processes", type=int, default=2, help="--seed-load: shard processes")
    ap.add_argument("--warmup", type=float, default=12.0, help="--seed-load: seconds before measuring")
    ap.add_argument("--runs", type=int, default=3, help="--seed-load: runs of each (median)")
    ap.add_argument("--peers", action="store_true",
                    help="ultra's shard beside a bare httpx loop and raw trio sockets (tools/peers.py)")
    ap.add_argument("--seed-child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed_child:
        url, db, processes, index, instances, per_client = args.seed_child
        return seed_child(url, db, int(processes), int(index), int(instances), int(per_client))
    if args.seed_load:
        return seed_main(args)
    suite = get_suite("workflow")
    spec = next(shard_plan("http://x", workers=1, qps=1, tests=10).shards[0].tests.specs(suite))
    body = first_turn_body(spec)
    if args.peers:
        from peers import peers

        print(json.dumps(peers(body, seconds=args.seconds)))
        return
    out: dict = {}
    with SimProcess(SimConfig()) as sim:
        if not args.qps_only:
            ex_rps, ex_n, _ = run_executor(sim.url, workers=args.workers, qps=1e6, tests=600)
            bare = run_bare(sim.url, body, workers=args.workers, requests=max(ex_n, 2000))
            out.update(workers=args.workers, executor_rps=round(ex_rps, 1), bare_rps=round(bare, 1),
                       ratio=round(ex_rps / bare, 3))
        qps_rows = {}
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                   for _ in range(args.burners)]
        try:
            for qps in (20, 100, 300):
                sim.reset()
                # enough tests for ~`seconds` of traffic at this rate (about 4 turns a test)
                rps, n, elapsed = run_executor(sim.url, workers=64, qps=qps,
                                               tests=max(20, int(qps * args.seconds / 4)))
                busiest = sim.stats()["total"]["max_per_second"]
                qps_rows[str(qps)] = dict(achieved=round(rps, 1), ratio=round(rps / qps, 3),
                                          busiest_1s_window=busiest, requests=n,
                                          seconds=round(elapsed, 2))
        finally:
            for b in burners:
                b.kill()
                b.wait()
        out["qps"] = qps_rows
        out["burners"] = args.burners
        if args.qps_only:
            print(json.dumps(out))
            return
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
