"""The command line: thin typer commands over the library (imperative shell only).

Every command turns `UserError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
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
sim_app = typer.Typer(help="The loopback LLM simulator.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")
app.add_typer(config_app, name="config")

DEFAULT_DB = Path("ultra-data/events.db")
DEFAULT_OUT = Path("ultra-data/master_database.json")

DbOpt = Annotated[Path, typer.Option("--db", help="Event log (SQLite).")]
OutOpt = Annotated[Path, typer.Option("--out", help="master_database.json to write.")]
ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", help="TOML config; default: the bundled demo.")
]


def main() -> None:
    try:
        app()
    except UserError as exc:
        print(f"ultra: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# ---- storage commands (event log, projection, audit) ----------------------------------

# STORAGE-COMMANDS-BEGIN
# STORAGE-COMMANDS-END


# ---- collection commands (run, plan, config, sim) -------------------------------------

# SIM-COMMANDS-BEGIN
# SIM-COMMANDS-END

# COLLECTION-COMMANDS-BEGIN
# COLLECTION-COMMANDS-END
