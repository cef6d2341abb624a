"""Event factories, hypothesis strategies and a writer process for the storage tests.

Run as a script it is a writer process: `python storage_helpers.py DB WRITER N SEED GO`
appends N events in batches of random sizes once the file GO exists.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, get_args

import msgspec
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the writer script runs outside pytest
    sys.path.insert(0, str(ROOT))

from projections.master_database import AVERAGED, TOKENS  # noqa: E402
from projections.repairs import collect_repairs, resolve_retraction  # noqa: E402
from ultra import events as ev  # noqa: E402


def ts(i: int) -> str:
    """A recorded_at that sorts with i."""
    return f"2025-07-01T00:00:00.{i:06d}Z"


def _test(i: int, prefix: str) -> dict[str, Any]:
    """The fields every test event has: what the test was and where it ran."""
    return dict(
        event_id=f"{prefix}{i}",
        recorded_at=ts(i),
        run_id="run-1",
        shard_id="shard-0",
        test_key=f"key-{i}",
        model="DeepSeek-V3-0324",
        instance="DeepSeek-V3-0324",
        provider="azure",
        task_id=f"task-{i}",
        task_type="simple_task",
        difficulty="easy",
        prompt_type="baseline",
        tool_success_rate=0.8,
    )


_RESULT_FIELDS = tuple(f.name for f in msgspec.structs.fields(ev.TestResult))
_METRICS = ev.WORKFLOW_METRICS


def completion(**fields: Any) -> ev.TestCompleted:
    """A test.completed from flat fields: result fields and the workflow metrics by name
    go into its `result`, the rest onto the event."""
    result = {k: fields.pop(k) for k in list(fields) if k in _RESULT_FIELDS}
    metrics = {k: fields.pop(k) for k in _METRICS if k in fields}
    result["metrics"] = {**result.get("metrics", {}), **metrics}
    return ev.TestCompleted(**fields, result=ev.TestResult(**result))


def completed(i: int = 0, **kw: Any) -> ev.TestCompleted:
    return completion(**{**_test(i, "c"), **dict(
        outcome="full_success",
        execution_time=1.0,
        turns=3,
        tool_calls=2,
        tool_coverage=1.0,
        workflow_score=0.9,
        phase2_score=0.8,
        quality_score=0.7,
        final_score=0.85,
    ), **kw})


def errored(i: int = 0, **kw: Any) -> ev.TestErrored:
    return ev.TestErrored(**{**_test(i, "e"), "reason": "rate_limited", **kw})


# ---- hypothesis ------------------------------------------------------------------------

MODELS = ["DeepSeek-V3-0324", "DeepSeek-V3-0324-2", "deepseek-v3-0324", "qwen2.5-7b-instruct",
          "qwen2.5-7b-instruct-key1", "grok-3", "team-qwen"]
ALIASES = [("team-qwen", "qwen2.5-7b-instruct"), ("grok-3", "grok-3-beta")]
PROMPTS = ["baseline", "optimal", "flawed_sequence_disorder"]
RATES = [0.6, 0.8, 0.9, 0.80004, 0.8125]  # 0.80004 keys as "0.8": rounding is to 4 digits
DIFFS = ["easy", "medium"]
TASKS = ["simple_task", "data_pipeline"]
OUTCOMES = list(get_args(ev.Outcome))
unit = st.floats(0, 1, allow_nan=False, allow_infinity=False)
# A second suite's metrics, which drawn runs declare (a mean or a sum) or leave undeclared
SUITE_METRICS = ["x", "y"]


# What a drawn test's result holds follows the schema: every field of `TestResult` that
# the projections average (its stat marks), every field of `Usage`, every workflow metric.
_DRAWN_COUNT = st.integers(0, 30)
_DRAWN_TOKENS = st.integers(0, 10**6)


@st.composite
def _result_fields(draw: st.DrawFn) -> dict[str, Any]:
    outcome = draw(st.sampled_from(OUTCOMES))
    return dict(
        outcome=outcome,
        error_category=None if outcome == "full_success" else draw(st.sampled_from(ev.ERROR_CATEGORIES)),
        **{f: draw(unit if kind == "rate" else _DRAWN_COUNT) for f, _, kind in AVERAGED},
        metrics={**{m: draw(unit) for m in _METRICS},
                 **draw(st.dictionaries(st.sampled_from(SUITE_METRICS), unit, max_size=2))},
        assisted_turns=draw(st.integers(0, 2)),
        finish_reasons=draw(st.lists(st.sampled_from(["stop", "tool_calls", "length", ""]),
                                     max_size=3)),
    )


@st.composite
def _test_fields(draw: st.DrawFn, key_space: int) -> dict[str, Any]:
    return dict(
        run_id=draw(st.sampled_from(["run-1", "run-2"])),
        shard_id=draw(st.sampled_from(["s0", "s1"])),
        test_key=f"key-{draw(st.integers(0, key_space))}",
        model=draw(st.sampled_from(MODELS)),
        instance=draw(st.sampled_from(["a", "b", "c"])),
        provider="p",
        task_id="t",
        task_type=draw(st.sampled_from(TASKS)),
        difficulty=draw(st.sampled_from(DIFFS)),
        prompt_type=draw(st.sampled_from(PROMPTS)),
        tool_success_rate=draw(st.sampled_from(RATES)),
        execution_time=draw(st.floats(0, 300, allow_nan=False)),
        usage=ev.Usage(**{name: draw(_DRAWN_TOKENS) for name in TOKENS}),
        **draw(_result_fields()),
    )


@st.composite
def event_lists(
    draw: st.DrawFn, *, max_size: int = 40, repairs: bool = True, unique_keys: bool = False
) -> list[ev.Event]:
    """Event sequences with increasing recorded_at; duplicates unless `unique_keys`."""
    n = draw(st.integers(0, max_size))
    out: list[ev.Event] = []
    aliases_used: set[str] = set()
    # one aggregate per metric name, as one suite declares it (which of two conflicting
    # declarations holds depends on their order: tested apart); the workflow suite's
    # metrics are means whatever a run declares
    aggregates = {n: draw(st.sampled_from(ev.AGGREGATES)) for n in SUITE_METRICS}
    for i in range(n):
        kind = draw(st.sampled_from(["c"] * 6 + ["e", "p", "s"] + (["a", "r"] if repairs else [])))
        when = ts(i)
        if kind == "c":
            f = draw(_test_fields(key_space=max_size if unique_keys else 8))
            if unique_keys:
                f["test_key"] = f"key-{i}"
            out.append(completion(event_id=f"ev{i}", recorded_at=when, **f))
        elif kind == "e":
            f = draw(_test_fields(key_space=8))
            for k in _RESULT_FIELDS:
                f.pop(k, None)
            if draw(st.booleans()):
                f["usage"] = ev.Usage()  # errored before any answer
            out.append(ev.TestErrored(event_id=f"ev{i}", recorded_at=when,
                                      reason=draw(st.sampled_from(ev.ERRORED_REASONS)), **f))
        elif kind == "p":
            f = draw(_test_fields(key_space=8))
            out.append(ev.RouteChecked(
                event_id=f"ev{i}", recorded_at=when, run_id=f["run_id"], shard_id=f["shard_id"],
                model=f["model"], instance=f["instance"], provider="p", ok=draw(st.booleans()),
                usage=f["usage"]))
        elif kind == "s":  # a run's start, declaring metrics (a workflow one included)
            names = draw(st.lists(st.sampled_from([*SUITE_METRICS, "final_score"]), unique=True,
                                  max_size=3))
            out.append(ev.RunStarted(
                event_id=f"ev{i}", recorded_at=when, run_id=draw(st.sampled_from(["run-1", "run-2"])),
                argv=["run"], config_digest="d", plan=ev.PlanSummary(tests=1, shards=1, models=[]),
                suite="arith", metrics=[ev.Metric(name=n, aggregate=aggregates.get(n) or draw(
                    st.sampled_from(ev.AGGREGATES))) for n in names]))
        elif kind == "a":
            alias, canonical = draw(st.sampled_from(ALIASES))
            if alias in aliases_used:  # one definition per alias: later ones would win
                continue
            aliases_used.add(alias)
            out.append(ev.AliasDefined(event_id=f"ev{i}", recorded_at=when, alias=alias,
                                       canonical=canonical))
        else:
            sel = draw(st.sampled_from([
                ev.Selector(model=draw(st.sampled_from(MODELS))),
                ev.Selector(run_id="run-2"),
                ev.Selector(shard_id="s1", instance="b"),
                ev.Selector(test_keys=[f"key-{draw(st.integers(0, 8))}", "key-1"]),
                ev.Selector(model="qwen2.5-7b-instruct", recorded_after=ts(max(0, i - 5))),
            ]))
            # Resolved when made, as `ultra repair retract` does; an empty match is refused.
            withdraws = resolve_retraction(
                sel, [e for e in out if isinstance(e, ev.TestCompleted)],
                collect_repairs(enumerate(out)))
            if withdraws:
                out.append(ev.TestsRetracted(event_id=f"ev{i}", recorded_at=when, selector=sel,
                                             reason="test", withdraws=withdraws))
    return out


# ---- writer process --------------------------------------------------------------------


def writer_main(db: str, writer: int, n: int, seed: int, go: str) -> None:
    from ultra.eventlog.store import EventLog

    rng = random.Random(seed)
    log = EventLog.open(db)
    while not Path(go).exists():  # start together, to collide as much as possible
        time.sleep(0.005)
    i = 0
    while i < n:
        size = min(n - i, rng.randint(1, 400))
        batch = [completed(0, event_id=f"w{writer}-{j}", test_key=f"w{writer}-{j}",
                           run_id=f"w{writer}", recorded_at=ev.utc_now())
                 for j in range(i, i + size)]
        assert log.append(batch) == size
        i += size
    log.close()


def crash_writer_main(db: str, batch: int) -> None:
    """Append fixed-size batches forever (until killed); batch b is run_id b."""
    from ultra.eventlog.store import EventLog

    log = EventLog.open(db)
    b = 0
    while True:
        log.append(completed(0, event_id=f"b{b}-{j}", test_key=f"b{b}-{j}", run_id=f"b{b}")
                   for j in range(batch))
        b += 1


if __name__ == "__main__":
    if sys.argv[1] == "crash":
        crash_writer_main(sys.argv[2], int(sys.argv[3]))
    else:
        writer_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])


# ---- raw SQL on either backend (what someone with the database, not ultra, can do) ----


def db_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    import psycopg

    return (sqlite3.DatabaseError, psycopg.Error)


def raw_sql(log: Any, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on the log's own connection (autocommit), `?` placeholders."""
    if log.dialect == "postgresql":
        cur = log.connection.execute(sql.replace("?", "%s"), params or None)
        return cur.fetchall() if cur.description else []
    return log.connection.execute(sql, params).fetchall()


def append_and_project(events: list, tmp: Path, splits: Sequence[int] = ()) -> tuple[Path, Path]:
    """Append `events` in pieces cut at `splits`, projecting after each; (log, JSON path)."""
    from ultra.projection.projecting import project
    from ultra.eventlog.store import EventLog

    db, out = tmp / "events.db", tmp / "master_database.json"
    with EventLog.open(db) as log:
        start = 0
        for cut in [*sorted(splits), len(events)]:
            log.append(events[start:cut])
            start = max(start, cut)
            project(db, out)
    return db, out
