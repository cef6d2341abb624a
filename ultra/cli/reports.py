"""The report commands: report (every table, the page, --compare) and runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ultra.errors import UserError

from ultra.cli import _check_common, _csv, _rates, app, DbOpt, OutOpt, ResultsOpt, UnusedConfigOpt
from ultra.defaults import DEFAULT_DB, DEFAULT_OUT

REPORT_FORMATS = ("table", "markdown", "csv", "json", "html", "latex")


@app.command("report")
def report_command(
    table: Annotated[Optional[str], typer.Argument(
        help="overview | prompt-types | flaws | tool-reliability | difficulty | task-types | "
             "scale | errors | all (default: overview; all for html)")] = None,
    db: DbOpt = DEFAULT_DB, out: OutOpt = DEFAULT_OUT, results: ResultsOpt = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Config giving family, params_b and prices (default: the demo).")] = None,
    models: Annotated[Optional[list[str]], typer.Option("--models", help="Models (comma-separated).")] = None,
    prompt_types: Annotated[Optional[list[str]], typer.Option(
        "--prompt-types", help="Prompt types; `all` or `all_with_flawed` too.")] = None,
    difficulty: Annotated[Optional[list[str]], typer.Option("--difficulty", help="Difficulties.")] = None,
    task_types: Annotated[Optional[list[str]], typer.Option("--task-types", help="Task types.")] = None,
    tool_success_rate: Annotated[Optional[list[str]], typer.Option(
        "--tool-success-rate", help="Tool success rates.")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run", help="Only this run id.")] = None,
    exclude_timeouts: Annotated[bool, typer.Option(
        "--exclude-timeouts", help="Leave tests that failed by timeout out of the denominators.")] = False,
    compare: Annotated[Optional[tuple[str, str]], typer.Option(
        "--compare", help="RUN_A RUN_B [TABLE]: B against A on the tests both took (paired n,"
                          " difference with a 95 % interval, exact McNemar test), per model and"
                          " the TABLE's dimension; legacy:SOURCE names a legacy source"
                          " (compared unpaired).")] = None,
    include_legacy: Annotated[bool, typer.Option(
        "--include-legacy", help="Add the legacy sources' tests into the models' own numbers"
                                 " (default: each source is a condition of its own).")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table | markdown | csv | json | html | latex")] = "table",
    output: Annotated[Optional[Path], typer.Option(
        "--output", help="Write here instead of stdout (csv of several tables: a directory,"
                         " a file per table).")] = None,
    examples: Annotated[Optional[int], typer.Option(
        "--examples", help="With `errors`: N test keys per error category (and errored"
        " reason) and model, to open with `ultra show`.")] = None,
    unpaired: Annotated[bool, typer.Option(
        "--unpaired", help="--compare the two runs' samples without pairing tests"
                           " (a two-proportion test; labelled unpaired).")] = False,
    condition: Annotated[Optional[str], typer.Option(
        "--condition", help="Only this condition: its label (max_turns=4, default) or id"
                            " (default: one section per condition).")] = None,
    intervals: Annotated[bool, typer.Option(
        "--intervals", help="Every rate with its 95 % Wilson interval and n (table, markdown;"
                            " machine formats always carry them).")] = False,
) -> None:
    """The standard tables of results.db (kept in step with the log first)."""
    from ultra.report.run import make_report
    from ultra.report.tables import TABLES, Selection

    _check_common(out, results)  # the config is read by the report itself
    if fmt not in REPORT_FORMATS:
        raise UserError(f"--format {fmt!r}: must be one of {', '.join(REPORT_FORMATS)}")
    names = [table] if table else (["all"] if fmt == "html" else ["overview"])
    if names == ["all"]:
        names = list(TABLES)
    elif names[0] not in TABLES:
        raise UserError(f"unknown table {table!r} (known: {', '.join(TABLES)}, all)")
    sel = Selection(models=_csv(models), prompt_types=_csv(prompt_types),
                    difficulties=_csv(difficulty), task_types=_csv(task_types),
                    rates=_rates(tool_success_rate), run=run_id,
                    exclude_timeouts=exclude_timeouts, include_legacy=include_legacy,
                    condition=condition, unpaired=unpaired)
    if examples is not None and (examples < 1 or names != ["errors"] or fmt in ("json", "html")):
        raise UserError("--examples N (N >= 1) goes with `ultra report errors` in the table,"
                        " markdown or csv format")
    if fmt == "csv" and output is not None and (len(names) > 1 or output.is_dir()):
        from ultra.report.run import write_csv_dir

        if examples is not None:
            raise UserError("--examples N goes with one table on stdout or in a file, not a"
                            " directory of CSV files")
        for path in write_csv_dir(output, db=db, out=out, results=results, config=config,
                                  selection=sel, tables=names, compare=compare):
            typer.echo(f"wrote {path}")
        return
    text = make_report(db=db, out=out, results=results, config=config, selection=sel,
                       tables=names, fmt=fmt, compare=compare, intervals=intervals)
    if examples is not None:
        from ultra.projection.results import results_path
        from ultra.transcripts.show import error_examples

        text += error_examples(results_path(out, results), examples, models=sel.models,
                               run=run_id, db=db)
    if output is None:
        sys.stdout.write(text)
        return
    from ultra.projection.files import write_atomic

    write_atomic(output, text.encode())
    typer.echo(f"wrote {output}")


@app.command("runs")
def runs_command(
    db: DbOpt = DEFAULT_DB, out: OutOpt = DEFAULT_OUT, results: ResultsOpt = None,
    config: UnusedConfigOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The runs of a log: id, start, end, models, tests completed and errored, interrupted,
    simulated."""
    import msgspec

    from ultra.report.provenance import interrupted_label
    from ultra.report.run import list_runs

    _check_common(out, results, config)
    found = list_runs(db=db, out=out, results=results)
    if json_output:
        print(msgspec.json.encode(found).decode())
        return
    if not found:
        raise UserError("the log holds no runs yet (run `ultra run`)")
    from rich.console import Console
    from rich.table import Table as RichTable

    table = RichTable(title=f"{len(found)} runs")
    for col in ("run", "started", "finished", "models", "completed", "errored", "interrupted",
                "simulated"):
        table.add_column(col, justify="right" if col in ("completed", "errored", "simulated")
                         else "left")
    for r in found:
        sim = "no" if not r.simulated else "yes" if r.simulated == r.completed else \
            f"{r.simulated} of {r.completed}"
        table.add_row(r.run_id, r.started_at or "-", r.finished_at or "-", ", ".join(r.models),
                      str(r.completed), str(r.errored), interrupted_label(r), sim)
    console = Console()
    if not console.is_terminal:
        console.width = 200  # a pipe gets whole names
    console.print(table)


__all__ = ["report_command", "REPORT_FORMATS", "runs_command"]
