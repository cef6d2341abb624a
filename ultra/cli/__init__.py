"""The command line: thin typer commands over the library (imperative shell only): the app
and the options every command shares here, the commands by job in `storage`, `reports`,
`collection` and `transcripts`.

Every command turns `UserError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ultra.errors import UserError

app = typer.Typer(
    name="ultra",
    help="Run LLM benchmark collections at high concurrency; every result is an immutable event.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

from ultra.sim.cli import sim_app  # noqa: E402  (its commands: `ultra sim serve`)

app.add_typer(sim_app)

def _db_location(text: str | Path) -> Path | str:
    from ultra.eventlog.locations import db_location

    return db_location(str(text))


DbOpt = Annotated[Path, typer.Option(
    "--db", parser=_db_location, metavar="PATH|URL",
    help="Event log: an SQLite file, or postgresql://… for one log shared by several machines.")]
OutOpt = Annotated[Path, typer.Option("--out", help="master_database.json to write.")]
ResultsOpt = Annotated[Optional[Path], typer.Option(
    "--results", help="results.db (default: beside --out).")]
ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", help="TOML config; default: the bundled demo.")
]
# The same four options on every command that reads a log, so one set of flags serves a
# script's every call. A command that reads no config still checks that --config parses,
# and one that writes no projection still checks --out and --results as `run` does.
UnusedConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="Accepted as on `ultra run`, so one set of flags serves every command;"
                     " only checked to be a valid config (this command reads none).")]
UnusedOutOpt = Annotated[Optional[Path], typer.Option(
    "--out", help="Accepted as on `ultra run`; checked to be a writable file path"
                  " (this command writes nothing).")]
UnusedResultsOpt = Annotated[Optional[Path], typer.Option(
    "--results", help="Accepted as on `ultra run`; checked to be a writable file path"
                      " (this command writes nothing).")]


def _check_common(out: Path | None = None, results: Path | None = None,
                  config: Path | None = None) -> None:
    """Bad --out, --results or --config: one line, before any work."""
    from ultra.errors import writable_file

    if out is not None:
        writable_file(out, "--out")
    if results is not None:
        writable_file(results, "--results")
    if config is not None:
        from ultra.config import load_config

        load_config(config)


ListOpt = Optional[list[str]]


def _csv(values: list[str] | None) -> list[str] | None:
    """Options take repeated values, comma-separated values, or both."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _rates(values: list[str] | None) -> list[float] | None:
    from ultra.config import Rate, checked

    items = _csv(values)
    if items is None:
        return None
    rates = []
    for item in items:
        try:
            rate = float(item)
        except ValueError:
            raise UserError(f"invalid tool success rate {item!r} (a number in [0, 1])") from None
        rates.append(checked(rate, Rate, "tool success rate"))
    return rates


SuiteOpt = Annotated[Optional[str], typer.Option("--suite", help="Suite name or module:ATTR.")]
TasksOpt = Annotated[Optional[Path], typer.Option("--tasks", help="Your own task library (JSON).")]
ModelsOpt = Annotated[ListOpt, typer.Option("--models", help="Models (comma-separated).")]
PromptOpt = Annotated[ListOpt, typer.Option(
    "--prompt-types", help="Prompt types; `all` or `all_with_flawed` too.")]
DifficultyOpt = Annotated[ListOpt, typer.Option("--difficulty", help="Difficulties.")]
TaskTypesOpt = Annotated[ListOpt, typer.Option("--task-types", help="Task types.")]
RateOpt = Annotated[ListOpt, typer.Option("--tool-success-rate", help="Tool success rates.")]
InstancesOpt = Annotated[Optional[int], typer.Option("--num-instances", help="Tests per cell.")]
TurnsOpt = Annotated[Optional[int], typer.Option("--max-turns", help="Turns per test.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def main() -> None:
    """The entry point lives in ultra.launch (quick commands skip typer)."""
    from ultra.launch import main

    main()

# The commands, registered in this order (`ultra --help` lists them so).
from ultra.cli import storage, reports, collection, transcripts  # noqa: E402,F401


__all__ = ["app", "config_app", "ConfigOpt", "DbOpt", "DifficultyOpt", "InstancesOpt", "JsonOpt",
           "ListOpt", "main", "ModelsOpt", "OutOpt", "PromptOpt", "RateOpt", "ResultsOpt",
           "SuiteOpt", "TasksOpt", "TaskTypesOpt", "TurnsOpt", "UnusedConfigOpt", "UnusedOutOpt",
           "UnusedResultsOpt"]
