"""What a report was made from (pure over an open results.db): the runs behind the
selection, the conditions, the selection itself, the ultra version, the log's chain head,
the simulated share, and when (the last folded event's time, never the wall clock)."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec


class RunInfo(msgspec.Struct, kw_only=True):
    run_id: str
    started_at: str | None = None
    finished_at: str | None = None
    interrupted: bool | None = None  # None: no run.finished recorded (killed, or running)
    models: list[str] = []
    completed: int = 0  # counted tests in results.db
    errored: int = 0
    simulated: int = 0  # of `completed`


class Provenance(msgspec.Struct, kw_only=True):
    ultra_version: str
    generated_at: str  # recorded_at of the last folded event
    last_seq: int
    chain_head: str
    results: str  # the results.db read
    selection: dict[str, Any]
    runs: list[RunInfo]
    conditions: list[dict[str, Any]] = []
    tests: int = 0
    simulated_tests: int = 0
    simulated_share: float | None = None


def runs_of(conn: sqlite3.Connection, where: str | None = None,
            params: list[Any] | tuple[Any, ...] = ()) -> list[RunInfo]:
    """The runs whose tests match `where` (over `tests` columns), or (None) every run of the
    log, in start order; legacy sources are conditions, not runs, and are not listed."""
    every = where is None
    where = where or "1 = 1"
    counted: dict[str, list[Any]] = {}
    for run, n, sim in conn.execute(
            f"SELECT run_id, COUNT(*), SUM(simulated) FROM tests WHERE {where} GROUP BY run_id",
            list(params)):
        counted[run] = [n, sim or 0]
    models: dict[str, list[str]] = {}
    for run, model in conn.execute(
            f"SELECT DISTINCT run_id, model FROM tests WHERE {where} ORDER BY run_id, model",
            list(params)):
        models.setdefault(run, []).append(model)
    errored = dict(conn.execute(
        f"SELECT run_id, COUNT(*) FROM errored WHERE {where} GROUP BY run_id", list(params)))
    known = {r[0]: r for r in conn.execute(
        "SELECT run_id, started_at, finished_at, interrupted FROM runs")}
    ids = set(counted) | set(errored) | (set(known) if every else set())
    out = []
    for run in ids:
        _, started, finished, interrupted = known.get(run, (run, None, None, None))
        n, sim = counted.get(run, [0, 0])
        out.append(RunInfo(run_id=run, started_at=started, finished_at=finished,
                           interrupted=None if finished is None else bool(interrupted),
                           models=models.get(run, []), completed=n,
                           errored=errored.get(run, 0), simulated=sim))
    out.sort(key=lambda r: (r.started_at or "", r.run_id))
    return out


def interrupted_label(r: RunInfo) -> str:
    return "no end recorded" if r.interrupted is None else "yes" if r.interrupted else "no"


def lines(p: Provenance) -> list[str]:
    """The provenance for people, one fact a line."""
    out = [f"ultra {p.ultra_version}; log up to seq {p.last_seq}, chain head"
           f" {p.chain_head or '-'}; generated at {p.generated_at or '-'} (the last event's time)"]
    sel = {k: v for k, v in p.selection.items() if v not in (None, False)}
    out.append("selection: " + (", ".join(f"{k}={v}" for k, v in sel.items()) or "everything"))
    if p.conditions:
        out.append("conditions: " + "; ".join(
            f"{c.get('label', c.get('condition'))} ({c.get('tests', 0)} tests)" for c in p.conditions))
    if p.simulated_share is not None:
        out.append(f"simulated: {p.simulated_tests} of {p.tests} tests"
                   f" ({100 * p.simulated_share:.0f} %)")
    for r in p.runs:
        out.append(f"run {r.run_id}: {r.started_at or '?'} to {r.finished_at or '?'},"
                   f" interrupted: {interrupted_label(r)}, {r.completed} tests,"
                   f" {r.errored} errored")
    return out


def rows(p: Provenance) -> list[tuple[str, Any]]:
    """The provenance as (key, value) pairs, for CSV."""
    out: list[tuple[str, Any]] = [
        ("ultra_version", p.ultra_version), ("generated_at", p.generated_at),
        ("last_seq", p.last_seq), ("chain_head", p.chain_head), ("tests", p.tests),
        ("simulated_tests", p.simulated_tests),
        ("simulated_share", "" if p.simulated_share is None else p.simulated_share),
        ("selection", msgspec.json.encode(p.selection).decode()),
    ]
    out += [(f"condition:{c.get('condition')}", c.get("label", "")) for c in p.conditions]
    out += [(f"run:{r.run_id}", f"{r.started_at or ''}/{r.finished_at or ''};"
             f" interrupted={interrupted_label(r)}") for r in p.runs]
    return out


__all__ = ["interrupted_label", "lines", "Provenance", "rows", "RunInfo", "runs_of"]
