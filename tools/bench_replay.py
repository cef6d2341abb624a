"""Benchmark of replay and resume at several log sizes; prints ONE JSON line, asserts nothing.

    .venv/bin/python tools/bench_replay.py [--sizes 100000,1000000]

For each size, on one log of synthetic completions (tools/bench_store.py's), side by side
and each in a fresh child process (time and peak RSS from its own ru_maxrss):

- `floor`: the bare read (`seq, type, payload` by seq, 5,000 a query), msgspec decode and a
  minimal fold (a count per model and outcome): the physical reference of a replay;
- `replay`: the master_database fold from zero (what `ultra project --rebuild` folds);
- `rebuild`: `project(rebuild=True)`, both projections (master_database.json, results.db);
- `plan_cli`: `ultra plan` as a CLI process (the resume read of every completed key).

Each figure comes as wall time and as CPU time (`*_cpu`: user + system of the child, imports
apart), which a busy machine does not inflate; `floor` and `replay` are the median of
`--repeat` children each, run alternately; `replay_vs_floor_cpu_paired` is the median of the
ratios of each pair run side by side, `_best` the ratio of the fastest child of each (on a
noisy machine, time is only ever added to a child). Peak RSS at each size is also given relative to the
first size (`*_rss_vs_first`: the memory a larger log adds). The first `project` of a log indexes its
completion keys once (`index_completions`); that
one-off is timed apart as `index_completions_s`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_store import batches  # noqa: E402
from ultra.projection.completion_index import CompletionIndex


def child(mode: str, db: str, out: str) -> None:
    from ultra import events as ev
    from ultra.projection.projecting import project, replay
    from ultra.eventlog.store import EventLog

    use = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = use.ru_utime + use.ru_stime  # imports apart
    t = time.perf_counter()
    if mode == "floor":
        with EventLog.open(Path(db), create=False) as log:
            conn, counts, after, decode = log.connection, {}, 0, ev.decode
            while True:
                rows = conn.execute("SELECT seq, type, payload FROM events WHERE seq > ?"
                                    " ORDER BY seq LIMIT 5000", (after,)).fetchall()
                for _seq, _type, payload in rows:
                    e = decode(payload)
                    k = (e.model, e.result.outcome)  # type: ignore[union-attr]
                    counts[k] = counts.get(k, 0) + 1
                if len(rows) < 5000:
                    break
                after = rows[-1][0]
    elif mode == "replay":
        with EventLog.open(Path(db), create=False) as log:
            replay(log, log.last_seq())
    elif mode == "rebuild":
        project(Path(db), out, rebuild=True)
    elif mode == "index":
        with EventLog.open(Path(db), create=False) as log:
            CompletionIndex.of(log).index_completions(log.last_seq())
    spent = time.perf_counter() - t
    use = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"s": spent, "cpu": use.ru_utime + use.ru_stime - cpu0, "rss_mb": use.ru_maxrss / 1024}))


def run_child(mode: str, db: Path, out: Path) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", mode, str(db), str(out)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def median_run(runs: list[dict]) -> dict:
    """The median of each figure over the runs (peak RSS: the largest)."""
    return {"s": statistics.median(r["s"] for r in runs), "cpu": statistics.median(r["cpu"] for r in runs),
            "rss_mb": max(r["rss_mb"] for r in runs)}


def cli_seconds(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one CLI process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ultra", *args], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="children per floor and replay figure")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    from ultra.eventlog.store import EventLog

    result: dict = {"load_at_start": os.getloadavg()[0]}
    first: dict | None = None  # the figures of the first size
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_replay.") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            db, out = Path(tmp) / f"{n}.db", Path(tmp) / f"{n}.json"
            with EventLog.open(db) as log:
                for batch in batches(n, 5000, seed=1):
                    log.append(batch)
            index = run_child("index", db, out)
            runs: dict[str, list[dict]] = {"floor": [], "replay": []}
            for _ in range(args.repeat):
                for m in runs:
                    runs[m].append(run_child(m, db, out))
            floor, rep = (median_run(runs[m]) for m in ("floor", "replay"))
            reb = run_child("rebuild", db, out)
            plans = sorted(cli_seconds(["plan", "--db", str(db)]) for _ in range(3))
            plan_s, plan_cpu = plans[1]
            result[str(n)] = {
                "floor_eps": round(n / floor["s"]), "replay_eps": round(n / rep["s"]),
                "rebuild_eps": round(n / reb["s"]),
                "replay_vs_floor": round(floor["s"] / rep["s"], 3),
                "rebuild_vs_floor": round(floor["s"] / reb["s"], 3),
                "replay_vs_floor_cpu": round(floor["cpu"] / rep["cpu"], 3),
                # each floor child beside the replay child run right after it: the median of
                # these ratios, and the ratio of the fastest of each (noise only adds time)
                "replay_vs_floor_cpu_paired": round(statistics.median(
                    f["cpu"] / r["cpu"] for f, r in zip(runs["floor"], runs["replay"])), 3),
                "replay_vs_floor_cpu_best": round(min(f["cpu"] for f in runs["floor"])
                                                  / min(r["cpu"] for r in runs["replay"]), 3),
                "rebuild_vs_floor_cpu": round(floor["cpu"] / reb["cpu"], 3),
                "floor_rss_mb": round(floor["rss_mb"], 1), "replay_rss_mb": round(rep["rss_mb"], 1),
                "rebuild_rss_mb": round(reb["rss_mb"], 1),
                "index_completions_s": round(index["s"], 2),
                "plan_cli_s": round(plan_s, 3), "plan_cli_cpu_s": round(plan_cpu, 3),
            }
            if first is None:
                first = result[str(n)]
            else:
                for name in ("replay", "rebuild"):
                    result[str(n)][f"{name}_rss_vs_first"] = round(
                        result[str(n)][f"{name}_rss_mb"] / first[f"{name}_rss_mb"] - 1, 3)
            db.unlink()
            for extra in (f"{db}-wal", f"{db}-shm"):
                Path(extra).unlink(missing_ok=True)
    result["load_at_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
