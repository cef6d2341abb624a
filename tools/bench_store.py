"""Benchmark of the storage core; prints ONE JSON line of figures and asserts nothing.

    .venv/bin/python tools/bench_store.py [--events 1000000] [--batch 500] [--postgresql]

With `--postgresql` it starts a throwaway PostgreSQL server (durable settings: fsync on)
and measures it beside SQLite.

Figures per backend: append events/s with 1 writer and with 4 writer processes; the same
rows without the hash chain and its serialization (SQLite: one `INSERT ... ON CONFLICT DO
NOTHING` executemany per batch, no insert guard, no hash; PostgreSQL: COPY with `seq` from a
sequence, no append lock, no hash) as the reference the chain may cost at most 10 % of;
full rebuild events/s of both logs and peak RSS (in a child process, from its own
ru_maxrss); chain verification rate (what `ultra audit` reads); and the time of an
incremental projection after one new event.

SQLite also gets a physical reference: a bare `executemany` of the same rows into a table
with one unique `event_id` index and nothing else (no chain, no guard, no other index),
and the bytes each append path writes per event (`wchar` of /proc/self/io: every byte
handed to write(2), WAL and checkpoints included).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ultra.eventlog import chain  # noqa: E402
from ultra import events as ev  # noqa: E402
from ultra.projection.projecting import project  # noqa: E402
from ultra.eventlog.event_rows import event_row  # noqa: E402
from ultra.eventlog.store import EventLog  # noqa: E402
from ultra.eventlog.locations import db_location, is_server_url

MODELS = ["DeepSeek-V3-0324", "DeepSeek-V3-0324-2", "qwen2.5-72b-instruct-key1", "gpt-4o-mini", "kimi-k2"]
PROMPTS = ["baseline", "optimal", "flawed_sequence_disorder"]
RATES = [0.6, 0.8, 0.9]
DIFFS = ["easy", "medium", "hard"]
TASKS = ["simple_task", "data_pipeline", "api_integration", "multi_stage_pipeline"]
OUTCOMES = ["full_success", "partial_success", "failure"]


def _templates() -> list[ev.TestCompleted]:
    """One realistic event per leaf (540 leaves); batches vary ids, keys and numbers."""
    rng = random.Random(7)
    out = []
    for model, prompt, rate, diff, task in itertools.product(MODELS, PROMPTS, RATES, DIFFS, TASKS):
        outcome = rng.choice(OUTCOMES)
        out.append(ev.TestCompleted(
            run_id="bench-run", shard_id=f"{model}#0", test_key="", model=model, instance=model,
            provider="azure", task_id=f"{task}_0001", task_type=task, difficulty=diff,
            prompt_type=prompt, tool_success_rate=rate, retries=0,
            execution_time=rng.uniform(1, 60), started_at="2025-07-01T00:00:00.000000Z",
            result=ev.TestResult(
                outcome=outcome,  # type: ignore[arg-type]
                metrics=dict(workflow_score=rng.random(), phase2_score=rng.random(),
                             quality_score=rng.random(), final_score=rng.random()),
                turns=rng.randint(1, 10), tool_calls=rng.randint(0, 12),
                tool_coverage=rng.random(), required_tools=4,
                error_category=None if outcome == "full_success" else rng.choice(ev.ERROR_CATEGORIES),  # type: ignore[arg-type]
                assisted_turns=rng.randint(0, 1)),
            usage=ev.Usage(prompt_tokens=1200, completion_tokens=300),
        ))
    return out


def batches(n: int, size: int, seed: int) -> Iterator[list[ev.TestCompleted]]:
    """`n` synthetic completions in batches: random ids and keys, like uuid4 and key hashes."""
    rng = random.Random(seed)
    templates = _templates()
    replace = msgspec.structs.replace
    for start in range(0, n, size):
        yield [
            replace(
                templates[rng.randrange(len(templates))],
                event_id=ev.new_event_id(),
                test_key=f"{rng.getrandbits(64):016x}",
                recorded_at=f"2025-07-01T{(i // 3600000) % 24:02d}:{(i // 60000) % 60:02d}:"
                f"{(i // 1000) % 60:02d}.{i % 1000:03d}000Z",
            )
            for i in range(start, min(n, start + size))
        ]


def _written() -> int:
    """Bytes this process has handed to write(2) so far."""
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


class Physical:
    """The physical reference: the same rows, one unique `event_id` index, nothing else."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None, timeout=60)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, type TEXT,"
            " recorded_at TEXT, test_key TEXT, model TEXT, run_id TEXT, payload TEXT)")
        self.conn.execute("CREATE TABLE transcripts (seq INTEGER PRIMARY KEY, digest TEXT, data BLOB)")

    def append(self, batch: list[ev.TestCompleted],
               transcripts: dict[str, tuple[str, bytes]] | None = None) -> None:
        """One transaction; `transcripts` (event id -> digest, bytes) go in beside, by seq."""
        rows = [event_row(e) for e in batch]
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO events (event_id, type, recorded_at, test_key, model, run_id, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        if transcripts:  # the batch's seqs end at the last row's
            first = self.conn.execute("SELECT last_insert_rowid()").fetchone()[0] - len(rows) + 1
            self.conn.executemany("INSERT INTO transcripts VALUES (?, ?, ?)",
                                  [(first + i, *transcripts[e.event_id]) for i, e in enumerate(batch)])
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def _warm(db: Path | str) -> None:
    EventLog.open(db).close()


class Unchained:
    """The append without chain and serialization, into the same schema: the reference."""

    def __init__(self, db: Path | str) -> None:
        EventLog.open(db).close()  # schema only
        self.pg = is_server_url(db)
        if self.pg:
            import psycopg

            self.conn = psycopg.connect(str(db), autocommit=True)
            self.conn.execute("CREATE SEQUENCE IF NOT EXISTS bench_seq")
            self.conn.execute("ALTER TABLE events ALTER seq SET DEFAULT nextval('bench_seq')")
        else:
            self.conn = sqlite3.connect(db, isolation_level=None, timeout=60)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA cache_size = -65536")
            self.conn.execute("DROP TRIGGER IF EXISTS events_no_overwrite")

    def append(self, batch: list[ev.TestCompleted]) -> None:
        rows = [event_row(e) for e in batch]  # as `append` encodes them
        if self.pg:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cols = "event_id, type, recorded_at, test_key, model, run_id, payload, hash"
                with cur.copy(f"COPY events ({cols}) FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row((*r, ""))
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO events (event_id, type, recorded_at, test_key, model, run_id, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING", rows)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def append_timed(db: Path | str, n: int, size: int, seed: int, chained: bool = True,
                 physical: bool = False) -> tuple[float, int]:
    """Seconds spent appending n events (generation not counted), and bytes written."""
    spent = 0.0
    log: EventLog | Unchained | Physical = (
        Physical(Path(db)) if physical else EventLog.open(db) if chained else Unchained(db))
    written = 0
    try:
        for batch in batches(n, size, seed):
            w = _written()
            t = time.perf_counter()
            log.append(batch)
            spent += time.perf_counter() - t
            written += _written() - w
    finally:
        w = _written()
        log.close()  # the last checkpoint belongs to the append
        written += _written() - w
    return spent, written


def verify_timed(db: Path | str) -> tuple[float, int | None]:
    """Seconds to verify the whole chain, and the first break (None expected)."""
    t = time.perf_counter()
    with EventLog.open(db, create=False) as log:
        broken = chain.first_break(log.chain_rows())
    return time.perf_counter() - t, broken


def writers(db: Path | str, go: Path, n: int, size: int, k: int, chained: bool) -> float:
    """Wall time for k writer processes appending n/k each (cheap generation included)."""
    (EventLog.open(db) if chained else Unchained(db)).close()
    procs = [
        subprocess.Popen([sys.executable, __file__, "--writer", str(db), str(n // k), str(size),
                          str(100 + w), str(go), "chained" if chained else "unchained"],
                         stdout=subprocess.PIPE)
        for w in range(k)
    ]
    time.sleep(1.0)  # let them import and open
    t = time.perf_counter()
    go.touch()
    for p in procs:
        p.communicate()
        if p.returncode:
            raise SystemExit(f"writer failed: {p.returncode}")
    go.unlink()
    return time.perf_counter() - t


def writer(db: str, n: int, size: int, seed: int, go: str, mode: str) -> None:
    gen = batches(n, size, seed)
    location = db_location(db)
    log: EventLog | Unchained = EventLog.open(location) if mode == "chained" else Unchained(location)
    while not os.path.exists(go):
        time.sleep(0.001)
    for batch in gen:
        log.append(batch)
    log.close()


def rebuild_child(db: str, out: str) -> None:
    t = time.perf_counter()
    report = project(db_location(db), out, rebuild=True)
    spent = time.perf_counter() - t
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": spent, "folded": report.events_folded, "rss_mb": rss_kb / 1024}))


def rebuild(db: Path | str, out: Path) -> dict:
    child = subprocess.run([sys.executable, __file__, "--rebuild-child", str(db), str(out)],
                           capture_output=True, text=True, check=True)
    return json.loads(child.stdout)


def lease_cost(db: Path | str, n: int = 2000) -> dict:
    """What leases add per test, as a worker pays it: one claim before the test (its own
    transaction), and the claim's end inside the group commit that stores the event."""
    holder, events = "bench/host/1", [b for b in batches(n, 100, seed=5)]
    with EventLog.open(db) as log:
        t = time.perf_counter()
        for batch in events:
            for e in batch:
                log.claim(f"test:{e.test_key}", holder, "bench", 30.0)
        claim_s = time.perf_counter() - t
        t = time.perf_counter()
        for batch in events[: len(events) // 2]:
            log.append(batch)
        plain_s = time.perf_counter() - t
        t = time.perf_counter()
        for batch in events[len(events) // 2 :]:
            log.append(batch, holder=holder, done={f"test:{e.test_key}": e.event_id for e in batch})
        done_s = time.perf_counter() - t
        log.release_all(holder)
    half = n // 2
    return {"lease_claim_ms_per_test": round(1000 * claim_s / n, 3),
            "lease_end_ms_per_test": round(1000 * (done_s - plain_s) / half, 3)}


def backend_figures(new_db: Callable[[str], Path | str], d: Path, n: int, size: int,
                    sqlite: bool = True) -> dict:
    """Every figure of one backend; `new_db(name)` gives a fresh empty log location."""
    append_timed(new_db("warm"), max(1, n // 20), size, seed=3)  # caches, page cache, JIT of the OS
    if sqlite:  # side by side: the physical reference, then ultra's append
        phys_s, phys_w = append_timed(d / "physical.db", n, size, seed=1, physical=True)
    bare_db = new_db("bare")
    bare_s, _ = append_timed(bare_db, n, size, seed=1, chained=False)
    bare_rebuild = rebuild(bare_db, d / "bare.json")
    one_db = new_db("one")
    one_s, one_w = append_timed(one_db, n, size, seed=1)
    verify_s, broken = verify_timed(one_db)
    four_s = writers(new_db("four"), d / "go", n, size, 4, chained=True)
    four_bare_s = writers(new_db("fourbare"), d / "go", n, size, 4, chained=False)
    chained_rebuild = rebuild(one_db, d / "master_database.json")

    with EventLog.open(one_db, create=False) as log:
        log.append(next(batches(1, 1, seed=99)))
    t = time.perf_counter()
    inc = project(one_db, d / "master_database.json")
    inc_s = time.perf_counter() - t
    with EventLog.open(one_db, create=False) as log:
        log.append(next(batches(1, 1, seed=98)))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ultra", "project", "--db", str(one_db), "--out",
                    str(d / "master_database.json")], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    cli_s = time.perf_counter() - t
    physical = {} if not sqlite else {
        "physical_reference_eps": round(n / phys_s),
        "append_vs_physical": round(phys_s / one_s, 3),
        "physical_bytes_per_event": round(phys_w / n),
        "append_bytes_per_event": round(one_w / n),
    }
    return {
        **physical,
        **lease_cost(new_db("leases")),
        "append_1_writer_eps": round(n / one_s),
        "append_4_writers_eps": round(n // 4 * 4 / four_s),
        "append_unchained_1_writer_eps": round(n / bare_s),
        "append_unchained_4_writers_eps": round(n // 4 * 4 / four_bare_s),
        "chain_cost_1_writer": round(1 - bare_s / one_s, 3),
        "chain_cost_4_writers": round(1 - four_bare_s / four_s, 3),
        "rebuild_eps": round(chained_rebuild["folded"] / chained_rebuild["seconds"]),
        "rebuild_unchained_eps": round(bare_rebuild["folded"] / bare_rebuild["seconds"]),
        "rebuild_s": round(chained_rebuild["seconds"], 2),
        "rebuild_peak_rss_mb": round(chained_rebuild["rss_mb"], 1),
        "verify_chain_eps": round(n / verify_s),
        "chain_first_break": broken,
        "incremental_project_s": round(inc_s, 4),
        "incremental_events_folded": inc.events_folded,
        "incremental_rebuilt": inc.rebuilt,
        "incremental_cli_s": round(cli_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=500, help="events per append (group commit)")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the databases (temp)")
    ap.add_argument("--postgresql", action="store_true", help="also measure a PostgreSQL server")
    ap.add_argument("--writer", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--rebuild-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.writer:
        db, n, size, seed, go, mode = args.writer
        return writer(db, int(n), int(size), int(seed), go, mode)
    if args.rebuild_child:
        return rebuild_child(*args.rebuild_child)

    n, size = args.events, args.batch
    result: dict = {"events": n, "batch": size}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_store.") as tmp:
        d = Path(tmp)

        result["sqlite"] = backend_figures(lambda name: d / f"{name}.db", d, n, size)
        if args.postgresql:
            sys.path.insert(0, str(ROOT / "tests"))
            from pg_server import PgServer

            with PgServer.start(durable=True) as pg:
                result["postgresql"] = backend_figures(pg.create_database, d, n, size, sqlite=False)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
