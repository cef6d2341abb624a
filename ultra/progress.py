"""The live progress table of `ultra run` (rich), one row per shard."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ultra.shard import ShardSnapshot


def _eta(done: int, planned: int, elapsed: float) -> str:
    if done >= planned:
        return "done"
    if done == 0 or elapsed <= 0:
        return "…"
    seconds = int((planned - done) * elapsed / done)
    return f"{seconds // 60}:{seconds % 60:02d}"


def shard_table(snapshots: dict[str, ShardSnapshot]) -> Table:
    table = Table(title="ultra run", expand=False)
    for col, justify in (("shard", "left"), ("done/total", "right"), ("success", "right"),
                         ("errored", "right"), ("req/s", "right"), ("pace", "right"), ("retries", "right"),
                         ("429s", "right"), ("ETA", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for s in sorted(snapshots.values(), key=lambda s: s.shard):
        table.add_row(
            s.shard, f"{s.done}/{s.planned}",
            f"{100 * s.succeeded / s.completed:.0f}%" if s.completed else "–",
            str(s.errored), f"{s.requests / s.seconds:.1f}" if s.seconds > 0 else "–",
            f"{s.rate:g}",
            str(s.retries), str(s.throttled),
            "interrupted" if s.interrupted else _eta(s.done, s.planned, s.seconds),
        )
    return table


class Display:
    """A rich Live table when enabled and attached to a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self._console = Console(stderr=True)
        self._live = (
            Live(console=self._console, refresh_per_second=4, transient=False)
            if enabled and self._console.is_terminal else None
        )

    def __enter__(self) -> "Display":
        if self._live:
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._live.__exit__(*exc)

    def update(self, snapshots: dict[str, ShardSnapshot]) -> None:
        if self._live:
            self._live.update(shard_table(snapshots))
