"""Transcripts benchmark: what they cost in bytes, appends and dispatch. Prints ONE JSON
line of figures and asserts nothing.

    .venv/bin/python tools/bench_transcripts.py [--runs 2] [--seconds 10] [--warmup 8]
                                                [--events 20000] [--postgresql]

- `demo`: the embedded demo (`ultra run`, transcripts all): compressed and uncompressed
  bytes stored per test (median, p99, max) and the events table's bytes per test beside.
- `seed_load`: tools/bench_dispatch.py's seed load (13 models, 1,095 workers, lognormal
  latency with median 1 s) with `transcripts = "all"` and `"none"`, interleaved run by
  run: achieved requests/s, achieved/offered and client CPU per request (medians of
  `--runs`), and the bytes per test the "all" runs stored (median, p99).
- `append`: events/s appending test events in batches of 500 (the group commit) to a
  fresh log, with their transcripts (taken from the demo's) and without, side by side,
  each the best of 3; beside it the same pair through bench_store's physical reference
  (bare `executemany` of the same rows and transcripts: what the bytes alone cost);
  `--postgresql` adds a throwaway PostgreSQL server (tests/pg_server.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

import msgspec  # noqa: E402
import trio  # noqa: E402

from bench_store import Physical  # noqa: E402
from ultra import events as ev  # noqa: E402
from ultra.eventlog.store import EventLog  # noqa: E402


def _pct(values: list[int], q: float) -> int:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0


def _sizes(db: str) -> dict:
    import zlib

    conn = sqlite3.connect(db)
    blobs = [b for (b,) in conn.execute("SELECT data FROM transcripts")]
    tests = conn.execute("SELECT COUNT(*), SUM(LENGTH(payload)) FROM events"
                         " WHERE type IN ('test.completed', 'test.errored')").fetchone()
    conn.close()
    compressed = [len(b) for b in blobs]
    raw = [len(zlib.decompress(b)) for b in blobs]
    return dict(tests=tests[0], transcripts=len(blobs),
                compressed_median=int(statistics.median(compressed)) if compressed else 0,
                compressed_p99=_pct(compressed, 0.99), compressed_max=max(compressed, default=0),
                json_median=int(statistics.median(raw)) if raw else 0, json_p99=_pct(raw, 0.99),
                event_payload_mean=round((tests[1] or 0) / max(1, tests[0])))


def demo() -> tuple[dict, str]:
    tmp = tempfile.mkdtemp(prefix="ultra-bench-tr-")
    proc = subprocess.run([sys.executable, "-m", "ultra", "run", "--json", "--progress", "none"],
                          cwd=tmp, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    db = str(Path(tmp) / "ultra-data" / "events.db")
    return _sizes(db), db


# ---- seed load, transcripts on and off -------------------------------------------------


def seed_child(url: str, db: str, processes: int, index: int, instances: int, mode: str) -> None:
    from bench_dispatch import seed_plan

    from ultra.collect.processes import assign
    from ultra.collect.shard_process import ChildJob, run_process

    groups = assign(seed_plan(url, instances).shards, processes)
    job = ChildJob(run_id="bench-seed", db=db, suite="workflow", tasks=None, shards=groups[index],
                   transcripts=mode)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    trio.run(run_process, job, lambda snapshots: None)


def seed_load(mode: str, processes: int, warmup: float, window: float) -> dict:
    from bench_dispatch import SEED_LATENCY, measure, seed_plan

    from ultra.sim.config import SimConfig
    from ultra.sim.process import SimProcess

    instances = 200
    with SimProcess(SimConfig(latency=SEED_LATENCY)) as sim, tempfile.TemporaryDirectory() as tmp:
        plan = seed_plan(sim.url, instances)
        offered = sum(min(s.qps, s.workers / (SEED_LATENCY.median_ms / 1000)) for s in plan.shards)
        db = str(Path(tmp) / "events.db")
        EventLog.open(db).close()
        procs = [subprocess.Popen([sys.executable, __file__, "--seed-child", sim.url, db,
                                   str(processes), str(i), str(instances), mode])
                 for i in range(min(processes, len(plan.shards)))]
        w = measure(sim, procs, warmup, window)
        achieved = w.requests / w.seconds
        out = dict(achieved_rps=round(achieved, 1), achieved_vs_offered=round(achieved / offered, 3),
                   client_cpu_ms_per_request=round(1000 * w.client_cpu / max(1, w.requests), 3))
        if mode != "none":
            out["stored"] = _sizes(db)
        return out


# ---- appends ---------------------------------------------------------------------------


def _events(n: int, blobs: list[tuple[str, bytes]]) -> tuple[list[ev.Event], dict]:
    from storage_helpers import completed

    evs, carried = [], {}
    for i in range(n):
        e = completed(i, event_id=f"{i:012d}", test_key=f"key-{i}")
        digest, blob = blobs[i % len(blobs)]
        evs.append(msgspec.structs.replace(e, transcript=digest))
        carried[evs[-1].event_id] = (digest, blob)
    return evs, carried


def append_rate(location_of, n: int, blobs: list[tuple[str, bytes]], with_transcripts: bool,
                physical: bool = False) -> float:
    """Best of 3 (events/s): ultra's append, or with `physical` bench_store's physical
    reference (bare `executemany` of the same rows, and of the same transcripts beside)."""
    evs, carried = _events(n, blobs)
    if not with_transcripts:
        evs = [msgspec.structs.replace(e, transcript=None) for e in evs]
    best = 0.0
    for attempt in range(3):
        location = location_of(attempt, with_transcripts)
        log = Physical(location) if physical else EventLog.open(location)
        t0 = time.perf_counter()
        for i in range(0, n, 500):
            part = evs[i:i + 500]
            log.append(part, transcripts={e.event_id: carried[e.event_id] for e in part}
                       if with_transcripts else None)
        best = max(best, n / (time.perf_counter() - t0))
        log.close()
    return round(best, 1)


def appends(n: int, demo_db: str, postgresql: bool) -> dict:
    conn = sqlite3.connect(demo_db)
    blobs = [(d, bytes(b)) for d, b in conn.execute("SELECT digest, data FROM transcripts")]
    conn.close()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("physical", "ultra"):  # the bytes' own cost first, then ultra's append
            def sqlite_at(i: int, on: bool) -> Path:
                return Path(tmp) / f"{kind}-{'on' if on else 'off'}{i}.db"

            off = append_rate(sqlite_at, n, blobs, False, physical=kind == "physical")
            on = append_rate(sqlite_at, n, blobs, True, physical=kind == "physical")
            out["sqlite" if kind == "ultra" else "sqlite_physical_reference"] = dict(
                events=n, without_transcripts_eps=off, with_transcripts_eps=on,
                slowdown=round(1 - on / off, 3))
        # ultra's append with transcripts against the bare rows with them: what is ours
        out["sqlite"]["with_transcripts_vs_physical"] = round(
            out["sqlite"]["with_transcripts_eps"]
            / out["sqlite_physical_reference"]["with_transcripts_eps"], 3)
    if postgresql:
        from pg_server import PgServer

        with PgServer.start(durable=True) as pg:
            def pg_at(i: int, on: bool) -> str:
                return pg.create_database(f"{'on' if on else 'off'}{i}")

            off = append_rate(pg_at, n, blobs, False)
            on = append_rate(pg_at, n, blobs, True)
            out["postgresql"] = dict(events=n, without_transcripts_eps=off, with_transcripts_eps=on,
                                     slowdown=round(1 - on / off, 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2, help="seed-load runs of each mode (median)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seed-load measuring window")
    ap.add_argument("--warmup", type=float, default=8.0, help="seed-load seconds before measuring")
    ap.add_argument("--processes", type=int, default=2)
    # 100,000: past SQLite's WAL checkpoint (every ~40 MB), which a 20,000-event log without
    # transcripts never reached while the one with them did
    ap.add_argument("--events", type=int, default=100_000, help="events per append measurement")
    ap.add_argument("--postgresql", action="store_true")
    ap.add_argument("--seed-child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed_child:
        url, db, processes, index, instances, mode = args.seed_child
        return seed_child(url, db, int(processes), int(index), int(instances), mode)
    out: dict = {"load_at_start": os.getloadavg()[0]}
    out["demo"], demo_db = demo()
    out["append"] = appends(args.events, demo_db, args.postgresql)
    runs: dict[str, list[dict]] = {"all": [], "none": []}
    for _ in range(args.runs):  # interleaved: load changes hit both alike
        for mode in runs:
            runs[mode].append(seed_load(mode, args.processes, args.warmup, args.seconds))
    seed: dict = {}
    for mode, rs in runs.items():
        seed[f"transcripts_{mode}"] = {
            k: statistics.median(r[k] for r in rs)
            for k in ("achieved_rps", "achieved_vs_offered", "client_cpu_ms_per_request")}
        seed[f"transcripts_{mode}"]["achieved_rps_each_run"] = [r["achieved_rps"] for r in rs]
    seed["stored_per_test"] = runs["all"][-1]["stored"]
    on, off = seed["transcripts_all"], seed["transcripts_none"]
    seed["cpu_per_request_increase"] = round(on["client_cpu_ms_per_request"]
                                             / off["client_cpu_ms_per_request"] - 1, 3)
    seed["achieved_rps_change"] = round(on["achieved_rps"] / off["achieved_rps"] - 1, 3)
    out["seed_load"] = seed
    out["load_at_end"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
