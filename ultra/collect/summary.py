"""The end of `ultra run` in words (pure): broken routes, errored tests by route and
reason with the server's message, tokens and cost per model."""

from __future__ import annotations

from ultra.collect.run_result import RunResult


def summary_lines(r: RunResult) -> list[str]:
    lines = [f"route broken: {b.route}: {b.reason}; its untaken tests wait for the next run"
             for b in r.broken_routes]
    if r.fenced:
        lines.append(f"results dropped: {r.fenced} tests whose claims another collector took"
                     " while this run stalled past --lease-seconds (they count as its)")
    if r.errors:
        lines.append("errored tests by route and reason:")
        for e in sorted(r.errors, key=lambda e: (e.route, -e.count)):
            status = f"HTTP {e.http_status}" if e.http_status else "no HTTP answer"
            lines.append(f"  {e.count:>5}  {e.route}: {e.reason} ({status}): {e.message}")
    if r.max_errors and r.errored:
        lines.append(f"errored tests within --max-errors: {r.planned - r.completed} "
                     f"of {r.max_errors} accepted")
    for t in sorted(r.tokens, key=lambda t: t.model):
        if not (t.prompt_tokens or t.completion_tokens):
            continue
        reasoning = f" ({t.reasoning_tokens:,} reasoning)" if t.reasoning_tokens else ""
        cost = f", cost {t.cost:,.4f}" if t.cost is not None else ""
        lines.append(f"tokens {t.model}: {t.prompt_tokens:,} in, {t.completion_tokens:,} out"
                     f"{reasoning}{cost}")
    return lines


def simulated_tests(results: str, run_id: str) -> tuple[int, int]:
    """(simulated, completed) tests of a run, as results.db counts them ((0, 0) if it
    cannot be read): the run summary marks simulated results."""
    import sqlite3
    from pathlib import Path

    if not results or not Path(results).is_file():
        return 0, 0
    try:
        conn = sqlite3.connect(f"file:{results}?mode=ro", uri=True)
        try:
            n, sim = conn.execute("SELECT COUNT(*), COALESCE(SUM(simulated), 0) FROM tests"
                                  " WHERE run_id = ?", (run_id,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0, 0
    return sim, n


def simulated_line(sim: int, n: int) -> str | None:
    """The run summary's mark of simulated results (None when there are none)."""
    if not sim:
        return None
    what = "all" if sim == n else f"{sim} of"
    return (f"SIMULATED: {what} {n} completed tests of this run were answered by the simulator,"
            " not by a model")


__all__ = ["simulated_line", "simulated_tests", "summary_lines"]
