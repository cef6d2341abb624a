"""Benchmark of the reports; prints the figures (one JSON line last) and asserts nothing.

    .venv/bin/python tools/bench_report.py [--events 1000000] [--db existing-events.db]

On a synthetic log (the completions `tools/bench_store.py` makes: 5 routes of 4 models,
540 leaves, random test keys): the full build rate of results.db beside the rebuild rate of
master_database.json, an incremental results.db update after one new event, the time of
each `ultra report` table (query + terminal rendering, in-process; target < 2 s), the whole
HTML page (target < 10 s), and one `ultra report overview` as a CLI process. The load
average is printed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_store import batches  # noqa: E402

from projections import master_database as mdb  # noqa: E402
from ultra.projection.results import build_results, update_results  # noqa: E402
from ultra.projection.projecting import fold_log  # noqa: E402
from ultra.report.formats import to_terminal  # noqa: E402
from ultra.report.page import to_html  # noqa: E402
from ultra.report.run import model_info, tables_for  # noqa: E402
from ultra.report.tables import TABLES, Selection  # noqa: E402
from ultra.eventlog.store import EventLog  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, help="an existing log to use instead of a new one")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    db = args.db or tmp / "events.db"
    fig: dict[str, object] = {"load_average_start": os.getloadavg()[0]}
    if args.db is None:
        with EventLog.open(db) as log:
            _, fig["write_log_s"] = timed(lambda: [log.append(b) for b in batches(args.events, 500, 1)])
    results = tmp / "results.db"
    with EventLog.open(db) as log:
        until = log.last_seq()
        fig["events"] = until
        (_, _), t = timed(lambda: fold_log(log, mdb.FoldState(), until))
        fig["json_rebuild_events_per_s"] = round(until / t)
        fig["json_rebuild_s"] = round(t, 2)
        _, t = timed(lambda: build_results(log, results, until))
        fig["results_db_build_events_per_s"] = round(until / t)
        fig["results_db_build_s"] = round(t, 2)
        fig["results_db_mb"] = round(results.stat().st_size / 2**20, 1)
    with EventLog.open(db) as log:  # one more event, then the incremental update
        log.append(next(batches(1, 1, 99)))
        _, t = timed(lambda: update_results(log, results, log.last_seq()))
        fig["results_db_incremental_1_event_s"] = round(t, 3)

    info = model_info("presets")
    conn = sqlite3.connect(f"file:{results}?mode=ro", uri=True)
    for name in TABLES:
        _, t = timed(lambda: to_terminal(tables_for(conn, Selection(), info, [name], None)))
        fig[f"table_{name}_s"] = round(t, 4)
    _, t = timed(lambda: to_terminal(tables_for(
        conn, Selection(), info, ["overview"], ("bench-run", "bench-run"))))
    fig["table_compare_s"] = round(t, 4)
    page, t = timed(lambda: to_html(tables_for(conn, Selection(), info, list(TABLES), None),
                                    source=str(results)))
    fig["html_s"] = round(t, 3)
    fig["html_mb"] = round(len(page.encode()) / 2**20, 1)
    conn.close()

    cli = [sys.executable, "-m", "ultra", "report", "overview", "--db", str(db), "--results",
           str(results), "--config", "presets"]
    p, t = timed(lambda: subprocess.run(cli, capture_output=True, text=True,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)}))
    fig["cli_report_overview_s"] = round(t, 3) if p.returncode == 0 else f"failed: {p.stderr.strip()}"
    fig["load_average_end"] = os.getloadavg()[0]

    width = max(len(k) for k in fig)
    for k, v in fig.items():
        print(f"{k:<{width}}  {v}")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
