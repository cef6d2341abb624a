"""Progress of `ultra run`, for people and for logs, and the table a run ends with.

`rich`: a live table on a terminal, one row per shard plus a totals row, 80 columns wide
(names shortened so that key and deployment suffixes stay visible), one number format per
column; a shard the server holds back (a 429's Retry-After, a limit's reset or spacing) is
named under the table, "paused by the server until HH:MM:SS" (local time), and its ETA
counts the rest of the pause. `plain`: one line every PLAIN_EVERY seconds, for logs and CI (the default when
stderr is not a terminal). `none`: silent. Progress goes to stderr; stdout keeps results.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Literal

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ultra.report.formats import to_terminal
from ultra.report.source import Column, Table
from ultra.collect.shard import ShardSnapshot

Mode = Literal["auto", "rich", "plain", "none"]
MODES: tuple[str, ...] = ("auto", "rich", "plain", "none")
PLAIN_EVERY = 10.0  # seconds between plain progress lines
WIDTH = 80


def clock(seconds: float) -> str:
    """Elapsed or remaining time as m:ss (h:mm:ss past an hour)."""
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def _eta(done: int, planned: int, elapsed: float, paused: float = 0.0) -> str:
    """The rest at the pace so far, plus what is left of a pause the server imposed."""
    if done >= planned:
        return "done"
    if done == 0 or elapsed <= 0:
        return clock(paused) + "+" if paused > 0 else "…"
    return clock((planned - done) * elapsed / done + paused)


def _paused(s: ShardSnapshot, now: float) -> float:
    """Seconds left of the shard's pause at wall-clock `now` (0: not paused)."""
    if s.paused_until is None or s.finished or s.done >= s.planned:
        return 0.0
    return max(0.0, s.paused_until - now)


def wall_clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def _success(s: ShardSnapshot) -> str:
    return f"{100 * s.succeeded / s.completed:.1f}" if s.completed else "–"


def totals(snapshots: dict[str, ShardSnapshot], elapsed: float) -> ShardSnapshot:
    """All shards as one (requests over the run's elapsed time, pace summed)."""
    snaps = list(snapshots.values())
    return ShardSnapshot(
        shard="total", planned=sum(s.planned for s in snaps),
        completed=sum(s.completed for s in snaps), succeeded=sum(s.succeeded for s in snaps),
        errored=sum(s.errored for s in snaps), requests=sum(s.requests for s in snaps),
        retries=sum(s.retries for s in snaps), throttled=sum(s.throttled for s in snaps),
        seconds=elapsed, rate=sum(s.rate for s in snaps),
        workers=sum(s.workers for s in snaps), window=sum(s.window for s in snaps),
        interrupted=any(s.interrupted for s in snaps),
        # the longest pause: the run's end waits for it (the others go on meanwhile)
        paused_until=max((s.paused_until for s in snaps
                          if s.paused_until is not None and not s.finished), default=None),
    )


# short headers: ten columns and the route names fit 80 characters without wrapping
COLUMNS = ("route", "done", "succ%", "err", "req/s", "pace", "conc", "retry", "429s", "ETA")


def _window(s: ShardSnapshot) -> str:
    """Requests allowed in flight: the workers, or `now/workers` once timeouts cut it."""
    return str(s.workers) if s.window >= s.workers else f"{s.window}/{s.workers}"


def _row(s: ShardSnapshot, now: float) -> list[str]:
    return [
        s.shard.rpartition("@")[2],  # the route (key or deployment) names the shard
        f"{s.done}/{s.planned}", _success(s), str(s.errored),
        f"{s.requests / s.seconds:.1f}" if s.seconds > 0 else "–", f"{s.rate:.1f}",
        _window(s), str(s.retries), str(s.throttled),
        "stopped" if s.interrupted else _eta(s.done, s.planned, s.seconds, _paused(s, now)),
    ]


def _pause_notes(snapshots: dict[str, ShardSnapshot], now: float) -> list[str]:
    """"paused by the server until HH:MM:SS: route, route" for each moment shards wait for."""
    until: dict[str, list[str]] = {}
    for s in sorted(snapshots.values(), key=lambda s: s.shard):
        if _paused(s, now) > 0:
            until.setdefault(wall_clock(s.paused_until or 0.0), []).append(s.shard.rpartition("@")[2])
    return [f"paused by the server until {t}: {', '.join(routes)}" for t, routes in sorted(until.items())]


def shard_table(snapshots: dict[str, ShardSnapshot], elapsed: float = 0.0,
                now: float | None = None) -> str:
    """One row per shard and a totals row, in 80 columns (long route names are shortened
    in the middle, so a key or deployment suffix stays visible); `now`: wall-clock epoch
    seconds, against which the shards' pauses are told."""
    now = time.time() if now is None else now
    cols = [Column(c, c, "text" if c == "route" else "figure") for c in COLUMNS]
    rows: list[list] = [_row(s, now) for s in sorted(snapshots.values(), key=lambda s: s.shard)]
    rows.append(_row(totals(snapshots, elapsed), now))
    return to_terminal([Table("progress", f"ultra run · {clock(elapsed)} elapsed", cols, rows,
                              _pause_notes(snapshots, now))], WIDTH)


def plain_line(snapshots: dict[str, ShardSnapshot], elapsed: float, now: float | None = None) -> str:
    now = time.time() if now is None else now
    t = totals(snapshots, elapsed)
    pct = f"{100 * t.done / t.planned:.0f}%" if t.planned else "–"
    rate = f"{t.requests / elapsed:.1f}" if elapsed > 0 else "–"
    paused = _paused(t, now)
    return (f"[{clock(elapsed)}] {t.done}/{t.planned} tests ({pct}), success {_success(t)}%, "
            f"errored {t.errored}, {rate} req/s, 429s {t.throttled}, "
            f"ETA {_eta(t.done, t.planned, elapsed, paused)}"
            + (f", paused by the server until {wall_clock(t.paused_until or 0.0)}" if paused else ""))


class Display:
    """Shows progress in the chosen mode; `update` is called often, it draws as it should."""

    def __init__(self, mode: Mode = "auto", *, stream=None,
                 now: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._console = Console(file=self._stream, width=WIDTH)
        if mode == "auto":
            mode = "rich" if self._console.is_terminal else "plain"
        self.mode = mode
        self._now = now
        self._wall = wall  # the pauses are told in wall-clock time
        self._start = now()
        self._last_line: float | None = None
        self._snapshots: dict[str, ShardSnapshot] = {}
        self._live = Live(console=self._console, refresh_per_second=4, transient=False) \
            if mode == "rich" else None

    def __enter__(self) -> Display:
        if self._live:
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._live.__exit__(*exc)
        elif self.mode == "plain" and self._snapshots:
            self._print_line()  # the last word, whenever the run ends

    def _print_line(self) -> None:
        self._stream.write(plain_line(self._snapshots, self._now() - self._start, self._wall()) + "\n")
        self._stream.flush()
        self._last_line = self._now()

    def update(self, snapshots: dict[str, ShardSnapshot]) -> None:
        self._snapshots = snapshots
        if self._live:
            self._live.update(Text(shard_table(snapshots, self._now() - self._start, self._wall())))
        elif self.mode == "plain":
            since = self._now() - (self._last_line if self._last_line is not None else self._start)
            if since >= PLAIN_EVERY:
                self._print_line()


def model_summary(snapshots: dict[str, ShardSnapshot], shard_models: dict[str, str]) -> Table:
    """The table a run ends with: per model, tests taken, success, errored, tokens."""
    per: dict[str, list[int]] = {}
    for shard, s in snapshots.items():
        m = per.setdefault(shard_models.get(shard, shard), [0, 0, 0, 0])
        m[0] += s.completed
        m[1] += s.succeeded
        m[2] += s.errored
        m[3] += s.prompt_tokens + s.completion_tokens  # every request, errored tests' too
    cols = [Column("model", "model", "text"), Column("tests", "tests", "count"),
            Column("success", "success %", "rate"), Column("errored", "errored", "count"),
            Column("tokens", "tokens", "tokens")]
    rows = [[m, t, (k / t if t else None), e, tok] for m, (t, k, e, tok) in sorted(per.items())]
    return Table("run", "This run, per model", cols, rows,
                 ["tests: completed in this run; success = full + partial; errored tests are"
                  " taken again by the next run"])


def summary_text(snapshots: dict[str, ShardSnapshot], shard_models: dict[str, str],
                 report_command: str) -> str:
    return to_terminal([model_summary(snapshots, shard_models)]) + f"more: {report_command}\n"


__all__ = ["clock", "COLUMNS", "Display", "Mode", "model_summary", "MODES", "PLAIN_EVERY",
           "plain_line", "shard_table", "summary_text", "totals", "wall_clock", "WIDTH"]
