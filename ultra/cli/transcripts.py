"""What the models did: show (one test's transcript) and export inspect."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


from ultra.cli import (
    _check_common, _csv, app, DbOpt, ModelsOpt, UnusedConfigOpt, UnusedOutOpt, UnusedResultsOpt,
)
from ultra.defaults import DEFAULT_DB

@app.command("show")
def show_command(
    key: Annotated[str, typer.Argument(metavar="TEST_KEY|EVENT_ID",
                                       help="A test key (its last test event) or an event id.")],
    db: DbOpt = DEFAULT_DB, json_output: Annotated[bool, typer.Option(
        "--json", help="The stored transcript as it is (JSON).")] = False,
    out: UnusedOutOpt = None, results: UnusedResultsOpt = None, config: UnusedConfigOpt = None,
) -> None:
    """One test's transcript: the cell, outcome and scores, then turn by turn the model's
    words and calls, the tool results, finish reasons, tokens, timings and HTTP attempts."""
    from ultra.transcripts.show import load, render

    _check_common(out, results, config)
    event, data = load(db, key)
    if json_output:
        sys.stdout.write(data.decode() + "\n")
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = 120
    render(event, data, console)


export_app = typer.Typer(help="Export a run's tests for other tools.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("inspect")
def export_inspect_command(
    run_id: Annotated[str, typer.Option("--run", help="The run to export.")],
    output: Annotated[Path, typer.Option("--output", help="Directory for the eval logs.")],
    models: ModelsOpt = None, db: DbOpt = DEFAULT_DB,
    out: UnusedOutOpt = None, results: UnusedResultsOpt = None, config: UnusedConfigOpt = None,
) -> None:
    """Inspect AI eval logs of a run (one per model, one sample per test), for
    `inspect view --log-dir DIR`; needs `pip install 'ultra[inspect]'`."""
    from ultra.transcripts.export_inspect import export

    _check_common(out, results, config)
    for path in export(db, run_id, _csv(models), output):
        typer.echo(f"wrote {path}")


__all__ = ["export_app", "export_inspect_command", "show_command"]
