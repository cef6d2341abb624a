"""Memory benchmark: peak RSS of `ultra run` as the number of tests grows.

Runs `ultra run` (a real subprocess, the bundled simulator at zero latency, two simulated
models of 128 workers each, a fresh SQLite log) for each size in `--tests`, and polls
`/proc` every 0.1 s for every process of the run's tree: the parent, each shard process
and the simulator. Prints one JSON line per size with each one's peak RSS (`VmHWM`, MB)
and, last, the ratio of the largest size's peaks to the smallest's (target: within 1.2
for the parent and the shards).

It asserts nothing. Usage: python tools/bench_memory.py [--tests 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS_PER_INSTANCE = 10  # two models x five task types x one prompt type, rate, difficulty

CONFIG = """
[run]
prompt_types = ["baseline"]
difficulties = ["easy"]
tool_success_rates = [0.8]
num_instances = {instances}

[providers.s]
kind = "sim"
shape = "openai"
keys = 1

[models.sim-good]
provider = "s"
workers = 128
qps = 100000

[models.sim-strong]
provider = "s"
workers = 128
qps = 100000
"""


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _tree(root: int) -> list[int]:
    """`root` and every descendant, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _status(int(entry)).get("PPid", "").strip()
            if ppid.isdigit():
                children.setdefault(int(ppid), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "parent"
    line = _cmdline(pid)
    if "resource_tracker" in line:
        return "tracker"
    if "ultra.sim" in line:
        return "simulator"
    return "shard" if "multiprocessing" in line or "spawn" in line else "other"


def measure(tests: int) -> dict:
    instances = max(1, tests // TESTS_PER_INSTANCE)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp, "bench.toml")
        cfg.write_text(CONFIG.format(instances=instances))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ultra", "run", "--config", str(cfg), "--db",
             str(Path(tmp, "events.db")), "--progress", "none", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp)
        peaks: dict[int, tuple[str, float]] = {}
        while proc.poll() is None:
            for pid in _tree(proc.pid):
                hwm = _status(pid).get("VmHWM", "").split()
                if hwm:
                    mb = int(hwm[0]) / 1024
                    role = peaks.get(pid, (None, 0.0))[0] or _role(pid, proc.pid)
                    peaks[pid] = (role, max(mb, peaks.get(pid, (role, 0.0))[1]))
            time.sleep(0.1)
        out, err = proc.communicate()
        elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ultra run of {tests} tests exited {proc.returncode}: {err[-500:]}")
    result = json.loads(out)
    by_role: dict[str, list[float]] = {}
    for role, mb in peaks.values():
        by_role.setdefault(role, []).append(round(mb, 1))
    return {"tests": result["planned"], "completed": result["completed"],
            "seconds": round(elapsed, 1), "peak_rss_mb": by_role}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, nargs="+", default=[1000, 10000, 100000])
    args = parser.parse_args()
    rows = []
    for n in args.tests:
        row = measure(n)
        rows.append(row)
        print(json.dumps(row), flush=True)
    first, last = rows[0]["peak_rss_mb"], rows[-1]["peak_rss_mb"]
    ratio = {role: round(max(last[role]) / max(first[role]), 2)
             for role in ("parent", "shard") if role in first and role in last}
    print(json.dumps({"ratio_largest_to_smallest": ratio, "target": 1.2}))


if __name__ == "__main__":
    main()
