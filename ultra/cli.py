"""The command line: thin typer commands over the library (imperative shell only).

Every command turns `UserError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ultra.errors import UserError

if TYPE_CHECKING:
    from collections import Counter

    from ultra.config import Config
    from ultra.plan import Selection, Shard

app = typer.Typer(
    name="ultra",
    help="Run LLM benchmark collections at high concurrency; every result is an immutable event.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

from ultra.defaults import DEFAULT_DB, DEFAULT_OUT  # noqa: E402
from ultra.launch import project_message  # noqa: E402
from ultra.sim.cli import sim_app  # noqa: E402  (its commands: `ultra sim serve`)

app.add_typer(sim_app)

def _db_location(text: str | Path) -> Path | str:
    from ultra.store import db_location

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


def main() -> None:
    """The entry point lives in ultra.launch (quick commands skip typer)."""
    from ultra.launch import main

    main()


# ---- storage commands (event log, projection, audit) ----------------------------------

# STORAGE-COMMANDS-BEGIN
RebuildOpt = Annotated[bool, typer.Option("--rebuild", help="Replay the whole log from seq 0.")]


@app.command("project")
def project_command(
    db: DbOpt = DEFAULT_DB, out: OutOpt = DEFAULT_OUT, rebuild: RebuildOpt = False,
    results: ResultsOpt = None, config: UnusedConfigOpt = None,
) -> None:
    """Bring master_database.json and results.db up to date with the event log
    (incrementally)."""
    from ultra.projecting import project

    _check_common(out, results, config)

    typer.echo(project_message(project(db, out, rebuild=rebuild, results=results)))


def _since(value: str, flag: str = "--since") -> str:
    """An ISO 8601 time as the log's `recorded_at` form, so strings compare in time order."""
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise UserError(f"{flag} {value!r}: not an ISO 8601 date or time (e.g. 2025-07-01T12:00Z)") from None
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@app.command("events")
def events_command(
    db: DbOpt = DEFAULT_DB,
    types: Annotated[
        Optional[list[str]], typer.Option("--type", help="Only this event type (repeatable).")
    ] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Only this model (any alias or instance name).")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="Only this run id.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Only events recorded at or after this UTC time.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many events.")] = None,
    with_transcripts: Annotated[bool, typer.Option(
        "--transcripts", help="After each test event with a stored transcript, a line"
        ' {"transcript": DIGEST, "zlib": BASE64} carrying it (`ultra import` stores it).')] = False,
    out: UnusedOutOpt = None, results: UnusedResultsOpt = None,
    config: UnusedConfigOpt = None,
) -> None:
    """Print events as JSON lines (the event plus its "seq"); `ultra import` reads them back."""
    from ultra.events import EVENT_TYPES
    from ultra.projecting import log_repairs
    from ultra.store import EventLog

    _check_common(out, results, config)
    for t in types or ():
        if t not in EVENT_TYPES:
            raise UserError(f"--type {t!r}: unknown event type (known: {', '.join(sorted(EVENT_TYPES))})")
    if limit is not None and limit < 0:
        raise UserError(f"--limit {limit}: must be 0 or more")
    since_key = _since(since) if since is not None else None
    with EventLog.open(db, create=False) as log:
        want = None
        if model is not None:
            repairs = log_repairs(log)
            want, canonical = repairs.canonical(model), repairs.canonical
        printed = 0
        out = sys.stdout
        try:
            for seq, _type, row_model, payload in log.raw(types=types, run_id=run, since=since_key):
                if limit is not None and printed >= limit:
                    break
                if want is not None and (row_model is None or canonical(row_model) != want):
                    continue
                out.write(f'{payload[:-1]},"seq":{seq}}}\n')
                printed += 1
                if with_transcripts and _type in ("test.completed", "test.errored"):
                    _write_transcript(out, log, seq, payload)
            out.flush()
        except BrokenPipeError:  # `ultra events | head`: the reader has all it wants
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _write_transcript(out, log, seq: int, payload: str) -> None:
    """The transcript line of the event at `seq`, if it names one and it is stored."""
    from ultra import transcripts as tr
    from ultra.event_rows import transcript_ref

    ref = transcript_ref(payload)
    stored = log.transcript_at(seq) if ref is not None else None
    if stored is not None and stored[0] == ref:
        out.write(tr.line(*stored) + "\n")


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="JSON lines as `ultra events` prints them; - for stdin.")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Append events from JSON lines, idempotently (merges logs); all of the file or none."""
    from ultra.store import EventLog

    with EventLog.open(db, create=True) as log:
        if str(file) == "-":
            r = log.append_raw(log.read_lines(sys.stdin.buffer, "stdin"), source="stdin")
        else:
            try:
                fh = file.open("rb")
            except OSError as exc:
                raise UserError(f"{file}: cannot read ({exc.strerror})") from None
            with fh:
                try:
                    r = log.append_raw(log.read_lines(fh, str(file)), source=str(file))
                except OSError as exc:
                    raise UserError(f"{file}: cannot read ({exc.strerror})") from None
    unknown = f", {r.unknown_types} of unknown types kept as they are" if r.unknown_types else ""
    carried = f", with {r.transcripts} transcripts" if r.transcripts else ""
    typer.echo(f"imported {r.stored} new events of {r.read} read into {db}{unknown}{carried}")


@app.command("audit")
def audit_command(db: DbOpt = DEFAULT_DB, out: OutOpt = DEFAULT_OUT,
                  results: ResultsOpt = None, config: UnusedConfigOpt = None) -> None:
    """Check the log, master_database.json and results.db; exit 1 with a list of findings."""
    from ultra.audit import audit

    _check_common(out, results, config)
    report = audit(db, out, results)
    for line in report.notes:
        typer.echo(f"note: {line}")
    for line in report.findings:
        typer.echo(f"finding: {line}")
    if report.findings:
        typer.echo(f"audit: {len(report.findings)} findings")
        raise typer.Exit(1)
    typer.echo("audit: clean")
@app.command("import-legacy")
def import_legacy_command(
    file: Annotated[Path, typer.Argument(help="A master_database.json of the system ultra replaces.")],
    source: Annotated[Optional[str], typer.Option(
        "--source", help="Name of the legacy source (default: the file's stem). A later import"
                         " under the same name replaces the earlier one in every projection.")] = None,
    exclude_models: Annotated[Optional[list[str]], typer.Option(
        "--exclude-models", help="Models to leave out (comma-separated), e.g. test models.")] = None,
    db: DbOpt = DEFAULT_DB, out: OutOpt = DEFAULT_OUT, results: ResultsOpt = None,
    config: UnusedConfigOpt = None,
) -> None:
    """Import a legacy master_database.json as events (idempotently), then project."""
    from ultra import legacy_import as li

    _check_common(out, results, config)
    name = li.source_name(file, source)
    data = li.read_file(file)  # read and checked before the log is opened: bad input stores nothing
    from ultra.naming import canonical_model
    from ultra.projecting import project
    from ultra.store import EventLog

    # the static naming only: the log's aliases apply when projecting, as for any result
    p = li.plan(file, data, name, canonical_model, _csv(exclude_models))
    for line in li.report(p, file):
        typer.echo(line)
    with EventLog.open(db, create=True) as log:
        stored = log.append([p.imported, *p.cells])
    if stored == 0:
        typer.echo(f"already imported: this file is in {db} as source {name!r}; nothing added")
    else:
        typer.echo(f"appended {stored} events ({p.imported.cells} cells) to {db}")
    r = project(db, out, results=results)
    typer.echo(f"{r.out} and {r.results} up to seq {r.last_seq}")


repair_app = typer.Typer(
    help="Repairs are events: define an alias or retract tests, then the projection replays.",
    no_args_is_help=True,
)
app.add_typer(repair_app, name="repair")
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the event).")]


def _append_repair(db: Path, out: Path, event, what: str = "",
                   results: Path | None = None) -> None:
    from ultra.projecting import project
    from ultra.store import EventLog

    import msgspec

    from ultra import events as ev

    tag = type(event).__struct_config__.tag
    try:  # what the log's readers would refuse is refused here, before it is stored
        ev.decode(ev.encode(event))
    except msgspec.ValidationError as exc:
        raise UserError(f"cannot record {tag}: {exc}") from None
    with EventLog.open(db, create=False) as log:
        log.append([event])
    r = project(db, out, results=results)
    typer.echo(f"recorded {tag}{what}; {r.out} rebuilt up to seq {r.last_seq}")


@repair_app.command("alias")
def repair_alias(alias: str, canonical: str, reason: ReasonOpt = "",
                 db: DbOpt = DEFAULT_DB, out: OutOpt = DEFAULT_OUT, results: ResultsOpt = None,
                 config: UnusedConfigOpt = None) -> None:
    """Fold results recorded under ALIAS into CANONICAL (retroactively)."""
    from ultra.events import AliasDefined

    _check_common(out, results, config)
    if not alias.strip() or not canonical.strip() or alias.strip() == canonical.strip():
        raise UserError("an alias needs two different, non-empty names")
    _append_repair(db, out, AliasDefined(alias=alias.strip(), canonical=canonical.strip(),
                                         reason=reason), results=results)


@repair_app.command("retract")
def repair_retract(
    reason: Annotated[str, typer.Option("--reason", help="Why (required).")],
    model: Annotated[Optional[str], typer.Option("--model")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard")] = None,
    instance: Annotated[Optional[str], typer.Option("--instance")] = None,
    test_key: Annotated[Optional[list[str]], typer.Option("--test-key")] = None,
    before: Annotated[Optional[str], typer.Option("--before", help="ISO 8601 time.")] = None,
    after: Annotated[Optional[str], typer.Option("--after", help="ISO 8601 time.")] = None,
    db: DbOpt = DEFAULT_DB, out: OutOpt = DEFAULT_OUT, results: ResultsOpt = None,
    config: UnusedConfigOpt = None,
) -> None:
    """Retract the earlier completions that match every given selector; the next
    `ultra run` takes those tests again."""
    from ultra.events import Selector, TestsRetracted

    _check_common(out, results, config)
    selector = Selector(model=model, run_id=run_id, shard_id=shard, instance=instance,
                        test_keys=test_key or None,
                        recorded_before=_since(before, "--before") if before else None,
                        recorded_after=_since(after, "--after") if after else None)
    if selector == Selector():
        raise UserError("a retraction needs at least one selector (--model, --run, --shard, "
                        "--instance, --test-key, --before, --after)")
    if not reason.strip():
        raise UserError("a retraction needs a --reason")
    from projections.repairs import resolve_retraction
    from ultra.projecting import log_repairs
    from ultra.store import EventLog

    with EventLog.open(db, create=False) as log:  # resolved now: what it hides is fixed
        withdraws = resolve_retraction(
            selector, (e for _, e in log.stream(types=["test.completed"])), log_repairs(log))  # type: ignore[misc]
    if not withdraws:
        raise UserError("the selectors match no completed test that is not already retracted; "
                        "nothing recorded (check them with `ultra events --type test.completed`)")
    typer.echo(f"retracting {len(withdraws)} completed tests")
    _append_repair(db, out, TestsRetracted(selector=selector, reason=reason, withdraws=withdraws),
                   f" ({len(withdraws)} completions withdrawn)", results)
# STORAGE-COMMANDS-END


# ---- reports ----------------------------------------------------------------------------

# REPORT-COMMANDS-BEGIN
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
        from ultra.projecting import results_path
        from ultra.show import error_examples

        text += error_examples(results_path(out, results), examples, models=sel.models,
                               run=run_id, db=db)
    if output is None:
        sys.stdout.write(text)
        return
    from ultra.projecting import write_atomic

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
# REPORT-COMMANDS-END


# ---- collection commands (run, plan, config, sim) -------------------------------------


# COLLECTION-COMMANDS-BEGIN
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


def _selection(
    config_path: Optional[Path], *, suite_name: Optional[str], tasks: Optional[Path],
    models: ListOpt, prompt_types: ListOpt, difficulty: ListOpt, task_types: ListOpt,
    rates: ListOpt, num_instances: Optional[int], max_turns: Optional[int],
) -> "tuple[Config, Selection, str | None]":
    """Config plus flags -> (config, Selection, task library path): shared by plan and run."""
    from ultra.config import MaxTurns, NumInstances, checked, load_config
    from ultra.plan import Selection, expand_prompt_types
    from ultra.suites import get_suite

    if num_instances is not None:  # flags are checked before the config is even read
        checked(num_instances, NumInstances, "--num-instances")
    if max_turns is not None:
        checked(max_turns, MaxTurns, "--max-turns")

    config, path = load_config(config_path)
    r = config.run
    if tasks is not None:
        tasks_path: str | None = str(tasks)
    else:  # a library named in the config is relative to the config file
        tasks_path = str((path.parent / r.tasks).resolve()) if r.tasks else None
    suite = get_suite(suite_name or r.suite, tasks_path)
    sel = Selection(
        suite=suite_name or r.suite,
        models=_csv(models) or r.models or list(config.models),
        prompt_types=expand_prompt_types(suite, _csv(prompt_types) or r.prompt_types),
        difficulties=_csv(difficulty) or r.difficulties,
        task_types=_csv(task_types) or r.task_types or list(suite.task_types),
        tool_success_rates=_rates(rates) or r.tool_success_rates,
        num_instances=num_instances if num_instances is not None else r.num_instances,
        max_turns=max_turns if max_turns is not None else r.max_turns,
    )
    return config, sel, tasks_path


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


@app.command()
def plan(
    config: ConfigOpt = None, db: DbOpt = DEFAULT_DB, out: UnusedOutOpt = None,
    results: UnusedResultsOpt = None, suite: SuiteOpt = None,
    tasks: TasksOpt = None, models: ModelsOpt = None, prompt_types: PromptOpt = None,
    difficulty: DifficultyOpt = None, task_types: TaskTypesOpt = None,
    tool_success_rate: RateOpt = None, num_instances: InstancesOpt = None,
    max_turns: TurnsOpt = None, json_output: JsonOpt = False,
) -> None:
    """Print the shard table of a run; nothing runs."""
    from collections import Counter

    import msgspec

    from ultra.plan import effective_qps
    from ultra.resume import key_problems, plan_run

    _check_common(out, results)  # as `ultra run` would, so the plan says what the run will
    cfg, sel, tasks_path = _selection(
        config, suite_name=suite, tasks=tasks, models=models, prompt_types=prompt_types,
        difficulty=difficulty, task_types=task_types, rates=tool_success_rate,
        num_instances=num_instances, max_turns=max_turns)
    result = plan_run(cfg, sel, db, tasks_path)
    for env, (provider, problem) in key_problems(result).items():
        print(f"warning: {env} {problem} (provider {provider!r}); ultra run will refuse it",
              file=sys.stderr)
    on_key = Counter(s.shared_limit.name for s in result.shards if s.shared_limit)
    rows = [
        dict(shard=s.shard_id, model=s.model, instance=s.instance, provider=s.provider,
             strategy=s.strategy, key_index=s.key_index, deployment=s.deployment,
             workers=s.workers, qps=s.qps, effective_qps=effective_qps(s), tpm=s.tpm,
             **(dict(key_budget=s.shared_limit.name, key_qps=s.shared_limit.qps,
                     key_tpm=s.shared_limit.tpm, key_shards=on_key[s.shared_limit.name])
                if s.shared_limit else {}),
             tests=len(s.tests))
        for s in result.shards
    ]
    from ultra.processes import choose_processes

    choice = choose_processes(result)
    if json_output:
        print(msgspec.json.encode(dict(planned=result.planned,
                                       skipped_completed=result.skipped_completed,
                                       shards=rows, processes=choice)).decode())
        return
    from rich.console import Console
    from rich.table import Table

    shared = any(s.shared_limit for s in result.shards)  # then: effective qps, key budget
    cols = ["model", "instance", "strategy", "provider", "route", "workers", "qps"]
    cols += ["effective qps", "key budget"] if shared else []
    table = Table(title=f"{result.planned} tests in {len(rows)} shards "
                        f"({result.skipped_completed} already completed)",
                  caption="key budget: the provider's key_qps / key_tpm, one budget that every"
                          " shard on that key shares" if shared else None)
    for col in cols + ["tests"]:
        table.add_column(col, justify="left" if col in cols[:5] else "right")
    for s in result.shards:
        route = f"key {s.key_index}" if s.key_index is not None else (s.deployment or "-")
        cells = [s.model, s.instance, s.strategy, s.provider, route, str(s.workers), f"{s.qps:g}"]
        if shared:
            cells += [f"{effective_qps(s):g}", _key_budget(s, on_key)]
        table.add_row(*cells, str(len(s.tests)))
    console = Console()
    if not console.is_terminal:
        console.width = 200  # a pipe gets whole names, not an 80-column squeeze
    console.print(table)
    console.print(f"{choice.line()}; `ultra run` measures each route's latency at preflight")


def _key_budget(s: "Shard", on_key: "Counter[str]") -> str:
    """The key budget a shard draws from, for people: `2 qps, 3 shards`."""
    if s.shared_limit is None:
        return "-"
    budget = [f"{s.shared_limit.qps:g} qps"] if s.shared_limit.qps else []
    budget += [f"{s.shared_limit.tpm:g} tpm"] if s.shared_limit.tpm else []
    n = on_key[s.shared_limit.name]
    return ", ".join(budget + [f"{n} shard{'s' if n > 1 else ''}"])


@app.command()
def run(
    config: ConfigOpt = None, db: DbOpt = DEFAULT_DB, out: OutOpt = DEFAULT_OUT,
    results: ResultsOpt = None, suite: SuiteOpt = None, tasks: TasksOpt = None, models: ModelsOpt = None,
    prompt_types: PromptOpt = None, difficulty: DifficultyOpt = None,
    task_types: TaskTypesOpt = None, tool_success_rate: RateOpt = None,
    num_instances: InstancesOpt = None, max_turns: TurnsOpt = None,
    processes: Annotated[Optional[int], typer.Option(
        "--processes",
        help="Shard processes (default: what the load needs, at most the CPU count).")] = None,
    no_preflight: Annotated[bool, typer.Option(
        "--no-preflight", help="Skip the one cheap request per route before any test.")] = False,
    max_errors: Annotated[Optional[str], typer.Option(
        "--max-errors", help="Errored tests accepted with exit code 0: a count (10) or a share (5%).")] = None,
    json_output: JsonOpt = False,
    progress: Annotated[str, typer.Option(
        "--progress", help="rich (live table) | plain (a line every 10 s) | none | auto "
                           "(rich on a terminal, else plain; none with --json).")] = "auto",
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for routes and tests that other runs on this log hold, instead"
        " of leaving them to those runs.")] = False,
    lease_seconds: Annotated[float, typer.Option(
        "--lease-seconds", help="How long a dead collector's routes and tests stay held"
        " (renewed every sixth of it while alive).")] = 30.0,
    store_timeout: Annotated[float, typer.Option(
        "--store-timeout", help="How long a lost event log (PostgreSQL restarting, a network"
        " cut) is waited for, reconnecting, before the run stops (exit 1).")] = 60.0,
    transcripts: Annotated[Optional[str], typer.Option(
        "--transcripts", help="Store the transcript of all tests, of failures (errored or"
        " not a full success) or none (default: the config's [run] transcripts, all).")] = None,
) -> None:
    """Plan, run every shard, project. Tests already completed are skipped (resume).

    Exit code: 0 every planned test completed (or the errored ones are within --max-errors);
    1 tests errored, a route broke, a shard process crashed or the event log failed mid-run;
    2 bad input or a route refused at preflight; 130 interrupted."""
    import msgspec

    from ultra.config import digest
    from ultra.run_result import error_allowance
    from ultra.runner import execute
    from ultra.summary import simulated_line, simulated_tests, summary_lines

    cfg, sel, tasks_path = _selection(
        config, suite_name=suite, tasks=tasks, models=models, prompt_types=prompt_types,
        difficulty=difficulty, task_types=task_types, rates=tool_success_rate,
        num_instances=num_instances, max_turns=max_turns)
    if processes is not None:
        from ultra.config import Processes, checked

        checked(processes, Processes, "--processes")
    if transcripts is not None:
        from ultra.transcripts import MODES as TRANSCRIPT_MODES

        if transcripts not in TRANSCRIPT_MODES:
            raise UserError(f"--transcripts {transcripts!r}: must be one of"
                            f" {', '.join(TRANSCRIPT_MODES)}")
        cfg = msgspec.structs.replace(cfg, run=msgspec.structs.replace(cfg.run, transcripts=transcripts))
    from ultra.progress import MODES, summary_text

    if progress not in MODES:
        raise UserError(f"--progress {progress!r}: must be one of {', '.join(MODES)}")
    error_allowance(max_errors, 0)  # a malformed budget is bad input, before anything runs
    if not 1.0 <= lease_seconds <= 3600.0:
        raise UserError(f"invalid --lease-seconds {lease_seconds} (must be in [1, 3600])")
    if not 1.0 <= store_timeout <= 86400.0:
        raise UserError(f"invalid --store-timeout {store_timeout} (must be in [1, 86400])")
    _check_common(out, results)  # before any test runs, not after all of them
    result = execute(cfg, digest(cfg), sel, db=db, out=out, results=results,
                     processes=processes, tasks=tasks_path,
                     argv=sys.argv[1:], json_output=json_output,
                     check_first=not no_preflight, max_errors=max_errors, progress=progress,
                     wait=wait, lease_seconds=lease_seconds, store_timeout=store_timeout)
    sim, sim_of = simulated_tests(result.results, result.run_id)
    if json_output:
        print(msgspec.json.encode({**msgspec.to_builtins(result), "simulated": sim}).decode())
    else:
        rate = f"{100 * result.succeeded / result.completed:.1f}%" if result.completed else "-"
        print(f"run {result.run_id}: {result.completed} completed (success {rate}), "
              f"{result.errored} errored, {result.skipped_completed} skipped as already "
              f"completed{'; INTERRUPTED' if result.interrupted else ''}")
        if simulated_line(sim, sim_of):
            print(simulated_line(sim, sim_of))
        if result.crashed_processes:
            print(f"{result.crashed_processes} shard process(es) died; run again to resume",
                  file=sys.stderr)
        for line in summary_lines(result):
            print(line)
        if result.elsewhere:
            print(f"{result.elsewhere} tests were completed by another run meanwhile")
        print(f"events: {result.db}\nresults: {result.out}, {result.results}")
        more = ["ultra report", "--run", result.run_id]
        for flag, value, default in (("--db", db, DEFAULT_DB), ("--out", out, DEFAULT_OUT),
                                     ("--results", results, None), ("--config", config, None)):
            if value is not None and str(value) != str(default):
                more += [flag, str(value)]
        if result.shards:
            print()
            print(summary_text({s.shard: s for s in result.shards}, result.shard_models,
                               " ".join(more)), end="")
    for line in result.held():  # on stderr also with --json: what this run left, and to whom
        print(line, file=sys.stderr)
    if result.not_taken:
        print(f"{result.not_taken} tests left to the runs holding them; `ultra run --wait`"
              " waits for them", file=sys.stderr)
    raise typer.Exit(result.exit_code)


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """The effective config (presets applied), with every secret masked; each provider
    shows only what applies to its kind and shape (keys or deployments)."""
    import msgspec

    from ultra.config import load_config, masked

    cfg, path = load_config(config)
    data = masked(cfg)
    data["source"] = str(path)
    print(msgspec.json.format(msgspec.json.encode(data), indent=2).decode())
# COLLECTION-COMMANDS-END


# ---- transcripts (show, export) -------------------------------------------------------

# TRANSCRIPT-COMMANDS-BEGIN
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
    from ultra.show import load, render

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
    from ultra.export_inspect import export

    _check_common(out, results, config)
    for path in export(db, run_id, _csv(models), output):
        typer.echo(f"wrote {path}")
# TRANSCRIPT-COMMANDS-END


__all__ = ["app", "audit_command", "config_app", "config_show", "ConfigOpt", "DbOpt",
           "DifficultyOpt", "events_command", "export_app", "export_inspect_command",
           "import_command", "import_legacy_command", "InstancesOpt", "JsonOpt", "ListOpt",
           "main", "ModelsOpt", "OutOpt", "plan", "project_command", "PromptOpt", "RateOpt",
           "ReasonOpt", "RebuildOpt", "repair_alias", "repair_app", "repair_retract",
           "report_command", "REPORT_FORMATS", "ResultsOpt", "run", "runs_command",
           "show_command", "SuiteOpt", "TasksOpt", "TaskTypesOpt", "TurnsOpt", "UnusedConfigOpt",
           "UnusedOutOpt", "UnusedResultsOpt"]
