"""How many requests/s the loopback simulator sustains (zero latency, no faults).

The server runs as a `SimProcess` (one process, so one core). Load comes from several
client processes, since one httpx client process tops out far below the server:

- `httpx`: trio + httpx.AsyncClient, `--concurrency` tasks per process, the way ultra's
  shards talk to a provider;
- `raw`: trio sockets writing a canned keep-alive request and reading the reply by its
  Content-Length, a client so cheap that the server is the bottleneck.

Prints one JSON line per mode. Asserts nothing about time.

    .venv/bin/python tools/bench_sim.py [--seconds 5] [--processes 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ultra.sim.server import SimConfig, SimProcess  # noqa: E402

BODY = json.dumps({"model": "sim-strong", "messages": [{"role": "user", "content": "Plan the workflow."}]}).encode()


async def _httpx_client(url: str, seconds: float, concurrency: int) -> int:
    import httpx
    import trio

    done = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        deadline = trio.current_time() + seconds

        async def worker() -> None:
            nonlocal done
            headers = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}
            while trio.current_time() < deadline:
                r = await client.post("/v1/chat/completions", content=BODY, headers=headers)
                if r.status_code == 200:
                    done += 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return done


async def raw_client(url: str, seconds: float, concurrency: int, *, body: bytes = BODY,
                     key: str = "bench-key", warmup: float = 0.0,
                     at_warm: Callable[[int], None] | None = None) -> int:
    """Replies with status 200 that `concurrency` keep-alive trio socket streams got in
    `seconds`, each sending `body` and reading the reply by its Content-Length (also
    tools/peers.py's raw client, which passes `at_warm`: called with the count so far
    `warmup` seconds in)."""
    import trio

    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    done = 0
    deadline = trio.current_time() + seconds

    async def worker() -> None:
        nonlocal done
        stream = await trio.open_tcp_stream(host, int(port))
        buf = b""
        async with stream:
            while trio.current_time() < deadline:
                await stream.send_all(request)
                while True:  # read one response: headers, then Content-Length bytes
                    head_end = buf.find(b"\r\n\r\n")
                    if head_end >= 0:
                        head = buf[:head_end].lower()
                        i = head.find(b"content-length:")
                        length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
                        end = head_end + 4 + length
                        if len(buf) >= end:
                            if buf.startswith(b"HTTP/1.1 200"):
                                done += 1
                            buf = buf[end:]
                            break
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk

    async def warm() -> None:
        await trio.sleep(warmup)
        at_warm(done)  # type: ignore[misc]

    async with trio.open_nursery() as nursery:
        if at_warm is not None:
            nursery.start_soon(warm)
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return done


def _client_process(mode: str, url: str, seconds: float, concurrency: int, out: mp.Queue) -> None:
    import trio

    fn = _httpx_client if mode == "httpx" else raw_client
    out.put(trio.run(fn, url, seconds, concurrency))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux): what the server really spent, whatever else
    shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(sim: SimProcess, mode: str, processes: int, seconds: float, concurrency: int) -> dict[str, object]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_client_process, args=(mode, sim.url, seconds, concurrency, out)) for _ in range(processes)]
    sim.reset()
    cpu_before = _cpu_seconds(sim.pid)
    for p in procs:
        p.start()
    # The server's own count over its own clock: client start-up is not in the window.
    counts = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    cpu = _cpu_seconds(sim.pid) - cpu_before
    stats = sim.stats()
    total = stats["total"]
    return {
        "mode": mode,
        "client_processes": processes,
        "concurrency_per_process": concurrency,
        "seconds": seconds,
        "ok_replies": sum(counts),
        "client_req_per_s": round(sum(counts) / seconds),
        "server_max_per_second": total["max_per_second"],
        "server_max_in_flight": total["max_in_flight"],
        "server_requests": total["requests"],
        "server_cpu_s": round(cpu, 2),
        # the rate one fully busy core would sustain: the figure that survives a shared box
        "server_req_per_cpu_s": round(total["requests"] / cpu) if cpu > 0 else None,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--modes", default="raw,httpx")
    parser.add_argument("--responder", default="echo", help="echo (server cost only) or suites")
    args = parser.parse_args()
    with SimProcess(SimConfig(responder=args.responder)) as sim:
        for mode in args.modes.split(","):
            print(json.dumps(run_mode(sim, mode, args.processes, args.seconds, args.concurrency)), flush=True)


if __name__ == "__main__":
    main()
