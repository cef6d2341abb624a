"""Benchmark of quick commands; prints ONE JSON line of figures and asserts nothing.

    .venv/bin/python tools/bench_startup.py [--events 100000] [--runs 7]

`ultra project` after one new event, as a CLI process (the median of `--runs`), beside
the same work in-process, the same command through the typer app (what every other
command pays), and a bare `python -c pass` for the interpreter's own start-up. `*_cpu_s`
are the CPU seconds of those processes (user + system): on a busy machine wall time
includes waiting for a core, CPU time does not.

The child processes run as an installed package runs: with bytecode cached (their own
PYTHONPYCACHEPREFIX in the temp directory, PYTHONDONTWRITEBYTECODE removed, one warm-up
run of each command first). `cli_nocache_*` is the same CLI process with everything but
ultra's own modules cached: those are compiled from source on every start, as in a
checkout run with PYTHONDONTWRITEBYTECODE=1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
from ultra.projection.projecting import project  # noqa: E402
from ultra.eventlog.store import EventLog  # noqa: E402

TYPER = "import sys; from ultra.cli import app; sys.argv[0] = 'ultra'; app()"


CPU: dict[str, list[float]] = {}  # CPU seconds of each child: what load does not inflate


def child_envs(tmp: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(bytecode cached, ultra compiled on every start) environments of the children.

    Both read bytecode only from their own PYTHONPYCACHEPREFIX (never a `__pycache__`
    beside the sources, which tests may have written); the second prefix is a copy of the
    first without ultra's modules, and nothing is written there.
    """
    base = {k: v for k, v in os.environ.items()
            if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    base["PYTHONPATH"] = str(ROOT)
    cached = {**base, "PYTHONPYCACHEPREFIX": str(tmp / "pycache")}
    nocache = {**base, "PYTHONPYCACHEPREFIX": str(tmp / "pycache-no-ultra"),
               "PYTHONDONTWRITEBYTECODE": "1"}
    return cached, nocache


def drop_ultra_bytecode(cached: dict[str, str], nocache: dict[str, str]) -> None:
    """Fill the second prefix: everything the warm-up cached except the project's own."""
    src, dst = Path(cached["PYTHONPYCACHEPREFIX"]), Path(nocache["PYTHONPYCACHEPREFIX"])
    shutil.copytree(src, dst)
    shutil.rmtree(dst / ROOT.relative_to(ROOT.anchor))


def timed(cmd: list[str], env: dict[str, str], name: str = "") -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=env)
    spent = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if name:
        CPU.setdefault(name, []).append(cpu)
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_startup.") as tmp:
        db, out = Path(tmp) / "events.db", Path(tmp) / "master_database.json"
        cached, nocache = child_envs(Path(tmp))
        with EventLog.open(db) as log:
            for batch in batches(args.events, 5000, seed=1):
                log.append(batch)
        project(db, out)  # the projections exist: each run below folds one new event
        argv = ["project", "--db", str(db), "--out", str(out)]
        cli = [sys.executable, "-m", "ultra", *argv]
        typer = [sys.executable, "-c", TYPER, *argv]
        added = 0

        def one_more() -> None:
            nonlocal added
            added += 1
            with EventLog.open(db) as log:
                log.append(next(batches(1, 1, seed=1000 + added)))

        for cmd in (cli, typer):  # the warm-up: writes the bytecode cache
            one_more()
            timed(cmd, cached)
        drop_ultra_bytecode(cached, nocache)
        figures: dict[str, list[float]] = {
            "cli": [], "cli_nocache": [], "typer": [], "in_process": [], "python": []}
        for _ in range(args.runs):  # interleaved, so load changes hit every figure alike
            one_more()
            figures["cli"].append(timed(cli, cached, "cli"))
            one_more()
            figures["cli_nocache"].append(timed(cli, nocache, "cli_nocache"))
            one_more()
            figures["typer"].append(timed(typer, cached, "typer"))
            one_more()
            t = time.perf_counter()
            project(db, out)
            figures["in_process"].append(time.perf_counter() - t)
            figures["python"].append(timed([sys.executable, "-c", "pass"], cached, "python"))
    result: dict[str, object] = {
        "events": args.events, "runs": args.runs, "load": os.getloadavg()[0],
        "bytecode": "cached (warm-up run first); cli_nocache_*: ultra compiled on each start"}
    result.update({f"{k}_s": round(statistics.median(v), 4) for k, v in figures.items()})
    result.update({f"{k}_cpu_s": round(statistics.median(v), 4) for k, v in CPU.items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
