"""The event log's commands: project, events, import, audit, import-legacy, repair."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ultra.errors import UserError

from ultra.cli import (
    _check_common, _csv, app, DbOpt, OutOpt, ResultsOpt, UnusedConfigOpt, UnusedOutOpt,
    UnusedResultsOpt,
)
from ultra.defaults import DEFAULT_DB, DEFAULT_OUT
from ultra.launch import project_message

RebuildOpt = Annotated[bool, typer.Option("--rebuild", help="Replay the whole log from seq 0.")]


@app.command("project")
def project_command(
    db: DbOpt = DEFAULT_DB, out: OutOpt = DEFAULT_OUT, rebuild: RebuildOpt = False,
    results: ResultsOpt = None, config: UnusedConfigOpt = None,
) -> None:
    """Bring master_database.json and results.db up to date with the event log
    (incrementally)."""
    from ultra.projection.projecting import project

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
    from ultra.projection.reading import log_repairs
    from ultra.eventlog.store import EventLog

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
    from ultra.eventlog.event_rows import transcript_ref

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
    from ultra.eventlog.store import EventLog

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
    from ultra.projection.audit import audit

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
    from ultra.legacy import importer as li

    _check_common(out, results, config)
    name = li.source_name(file, source)
    data = li.read_file(file)  # read and checked before the log is opened: bad input stores nothing
    from ultra.naming import canonical_model
    from ultra.projection.projecting import project
    from ultra.eventlog.store import EventLog

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
    from ultra.projection.projecting import project
    from ultra.eventlog.store import EventLog

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
    from ultra.projection.reading import log_repairs
    from ultra.eventlog.store import EventLog

    with EventLog.open(db, create=False) as log:  # resolved now: what it hides is fixed
        withdraws = resolve_retraction(
            selector, (e for _, e in log.stream(types=["test.completed"])), log_repairs(log))  # type: ignore[misc]
    if not withdraws:
        raise UserError("the selectors match no completed test that is not already retracted; "
                        "nothing recorded (check them with `ultra events --type test.completed`)")
    typer.echo(f"retracting {len(withdraws)} completed tests")
    _append_repair(db, out, TestsRetracted(selector=selector, reason=reason, withdraws=withdraws),
                   f" ({len(withdraws)} completions withdrawn)", results)


__all__ = ["audit_command", "events_command", "import_command", "import_legacy_command",
           "project_command", "ReasonOpt", "RebuildOpt", "repair_alias", "repair_app",
           "repair_retract"]
