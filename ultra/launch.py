"""The `ultra` process entry point: one clear line and exit code 2 for bad input, and the
incremental `ultra project` (run after every collection) without loading typer.

typer builds a pydantic TypeAdapter for every option it parses, so importing the typer
app costs ~3x the work of projecting one new event (tools/bench_startup.py measures both).
`project` with only `--db`, `--out`, `--results` and `--rebuild` therefore runs straight
from here; anything else, including `--help`, `--config` and any option this does not know,
goes to the typer app in `ultra.cli`, which defines every command.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ultra.defaults import DEFAULT_DB, DEFAULT_OUT
from ultra.errors import UserError

_PROJECT_VALUES = ("--db", "--out", "--results")


def main() -> None:
    import sqlite3

    from ultra.errors import fail, storage_error

    try:
        if not _quick_project(sys.argv[1:]):
            from ultra.cli import app

            app()
    except UserError as exc:
        fail(exc)
    except (sqlite3.DatabaseError, OSError) as exc:
        # What the stores did not already name (results.db, an output file): still one line.
        problem = storage_error(getattr(exc, "filename", None) or "ultra", exc)
        if problem is None:
            raise
        fail(problem)


def _quick_project(argv: list[str]) -> bool:
    """Run `ultra project` if `argv` is one with plain options only; False otherwise."""
    if not argv or argv[0] != "project":
        return False
    values: dict[str, str] = {}
    rebuild = False
    rest = iter(argv[1:])
    for arg in rest:
        name, eq, value = arg.partition("=")
        if arg == "--rebuild":
            rebuild = True
        elif name in _PROJECT_VALUES and name not in values:
            if not eq:
                value = next(rest, "")
            if not value or value.startswith("-"):
                return False  # typer says what is missing
            values[name] = value
        else:
            return False
    from ultra.errors import writable_file
    from ultra.projection.projecting import project
    from ultra.eventlog.locations import db_location

    results = values.get("--results")
    writable_file(values.get("--out", DEFAULT_OUT), "--out")
    if results:
        writable_file(results, "--results")
    r = project(db_location(values.get("--db", str(DEFAULT_DB))), Path(values.get("--out", DEFAULT_OUT)),
                rebuild=rebuild, results=Path(results) if results else None)
    print(project_message(r))
    return True


def project_message(r: object) -> str:
    """What `ultra project` prints (typer's command prints the same)."""
    skipped = r.skipped_unknown + r.undecodable  # type: ignore[attr-defined]
    note = f"; {skipped} events skipped (run `ultra audit`)" if skipped else ""
    how = "rebuilt" if r.rebuilt else "updated"  # type: ignore[attr-defined]
    also = "rebuilt" if r.results_rebuilt else "updated"  # type: ignore[attr-defined]
    return (f"{how} {r.out}: {r.events_folded} events folded, up to seq {r.last_seq}{note}"  # type: ignore[attr-defined]
            f"; {also} {r.results}")  # type: ignore[attr-defined]


__all__ = ["main", "project_message"]
