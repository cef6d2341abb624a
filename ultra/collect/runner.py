"""`ultra run`: plan, start shard processes, show progress, record the run, project.

The parent plans and supervises; each child process runs several shards as trio tasks
and owns one group-commit writer into the shared SQLite log. Children share nothing but
the log and a queue of progress snapshots. Ctrl-C / SIGTERM: every child cancels its
in-flight tests, commits what is pending, writes `shard.finished(interrupted)`; the parent
then records `run.finished(interrupted)`, projects, and exits 130.

The log failing under a shard process (PostgreSQL out of reach past `--store-timeout`, the
store's own retries spent; a full disk) stops that process's shards as an interrupt would:
what its writer could not store is counted per shard (`unstored`), not as completed, and
its tests' claims stay until the next run frees them (their holder is gone). The parent
prints that one line, the summary, and exits 1; it records no `run.finished` and projects
nothing (the next run does both).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

import msgspec
import trio

from ultra.collect.preflight import PREFLIGHT_TIMEOUT, RouteCheck, preflight
from ultra.config import Config, effective_model
from ultra.errors import RouteRefused, UserError, say
from ultra.events import Event, PlanSummary, Prices, RouteChecked, RunFinished, RunStarted
from ultra.defaults import LEASE_SECONDS, TRANSCRIPTS
from ultra.collect.leases import holder_id
from ultra.naming import canonical_model
from ultra.collect.plan import Plan, Selection, Shard, check_selection, make_plan
from ultra.projection.projecting import project
from ultra.projection.results import results_path
from ultra import providers
from ultra.collect.resume import completed_keys, key_problems, tasks_id
from ultra.collect.progress import Display
from ultra.collect.shard import ShardSnapshot
from ultra.eventlog.store import STORE_TIMEOUT, EventLog
from ultra.eventlog.locations import is_server_url
from ultra.suites import get_suite
from ultra.collect.processes import assign, choose_processes
from ultra.collect.run_result import (
    BrokenRoute, ModelTokens, RouteErrors, RunResult, error_allowance, exit_code, route_label,
)
from ultra.collect.shard_process import REPORT_SECONDS, ChildJob, _child_main

PREFLIGHT_SAY_AFTER = 10.0  # seconds of preflight before a line says what it waits for
PREFLIGHT_SAY_EVERY = 10.0


def check_routes(plan: Plan, say: Callable[[str], None] | None = None
                 ) -> tuple[list[str], dict[str, RouteCheck]]:
    """One cheap request per route that has tests, all at once: a line per broken route,
    and what each route's check found (its tokens are recorded). While routes keep it
    waiting, `say` gets a line every PREFLIGHT_SAY_EVERY seconds: which, and how long."""
    shards = [s for s in plan.shards if s.tests]
    checks: dict[str, RouteCheck] = {}

    async def check(s: Shard) -> None:
        checks[s.shard_id] = await preflight(
            s.route, s.options, request_timeout=min(s.request_timeout, PREFLIGHT_TIMEOUT),
            max_retries=s.max_retries, qps=s.qps,
            deadline=trio.current_time() + min(s.test_timeout, PREFLIGHT_TIMEOUT))

    async def waiting() -> None:
        start = trio.current_time()
        await trio.sleep(PREFLIGHT_SAY_AFTER)
        while say is not None:
            left = [s for s in shards if s.shard_id not in checks]
            names = ", ".join(route_label(s) for s in left[:3]) + (" ..." if len(left) > 3 else "")
            say(f"preflight: waiting {trio.current_time() - start:.0f}s for {len(left)} of"
                f" {len(shards)} routes to answer (at most {PREFLIGHT_TIMEOUT:g}s): {names}")
            await trio.sleep(PREFLIGHT_SAY_EVERY)

    async def main() -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(waiting)
            async with trio.open_nursery() as nursery:
                for s in shards:
                    nursery.start_soon(check, s)
            outer.cancel_scope.cancel()

    trio.run(main)
    lines = []
    for s in shards:
        c = checks[s.shard_id]
        if not c.ok:
            status = f"HTTP {c.http_status}" if c.http_status else "no answer"
            lines.append(f"route broken at preflight: {route_label(s)}: {status}: {c.message}")
    return lines, checks


def _checked_events(plan: Plan, run_id: str, checks: dict[str, RouteCheck]) -> list[Event]:
    return [RouteChecked(run_id=run_id, shard_id=s.shard_id, model=s.model, instance=s.instance,
                         provider=s.provider, simulated=c.simulated, ok=c.ok,
                         http_status=c.http_status, message=c.message[:4000], usage=c.usage,
                         prices=Prices(input=s.prices[0], output=s.prices[1]) if s.prices else None)
            for s in plan.shards if (c := checks.get(s.shard_id)) is not None]


def _tokens(config: Config, sel: Selection, plan: Plan, snapshots: dict[str, ShardSnapshot],
            checks: dict[str, RouteCheck]) -> list[ModelTokens]:
    """Tokens per model over every request of the run, preflight included, and their cost
    at the config's prices."""
    by_model: dict[str, list[int]] = {}
    for s in plan.shards:
        snap = snapshots[s.shard_id]
        sums = by_model.setdefault(s.model, [0, 0, 0])
        sums[0] += snap.prompt_tokens
        sums[1] += snap.completion_tokens
        sums[2] += snap.reasoning_tokens
        if (c := checks.get(s.shard_id)) is not None:
            sums[0] += c.usage.prompt_tokens
            sums[1] += c.usage.completion_tokens
            sums[2] += c.usage.reasoning_tokens
    config_name = {canonical_model(name): name for name in sel.models}
    out = []
    for model, (p, c, r) in by_model.items():
        name = config_name.get(model, model)
        cost = None
        if name in config.models:
            eff = effective_model(config, name)
            if eff.input_price is not None or eff.output_price is not None:
                cost = round(p / 1e6 * (eff.input_price or 0) + c / 1e6 * (eff.output_price or 0), 6)
        out.append(ModelTokens(model=model, prompt_tokens=p, completion_tokens=c,
                               reasoning_tokens=r, cost=cost))
    return out


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _without_passwords(argv: list[str]) -> list[str]:
    """The command line as recorded in `run.started`: a database URL loses its password."""
    from ultra.eventlog.store_postgres import redacted

    def one(arg: str) -> str:
        flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        return flag + eq + redacted(value) if is_server_url(value) and "@" in value else arg

    return [one(a) for a in argv]


def _last_seq(db: Path | str) -> int:
    """The log's last seq now (0 when there is no log yet)."""
    if isinstance(db, Path) and not db.exists():
        return 0
    # create=True: another collector may be creating this very log right now
    with EventLog.open(db, create=True) as log:
        return log.last_seq()


def missing_secrets(plan: Plan) -> list[str]:
    """The key variables that the planned routes read but the environment lacks (or holds
    something no HTTP header can carry)."""
    return [f"provider {provider!r}: environment variable {env} {problem}"
            for env, (provider, problem) in key_problems(plan).items()]


def execute(config: Config, config_digest: str, sel: Selection, *, db: Path | str, out: Path,
            processes: int | None, tasks: str | None, argv: list[str], json_output: bool,
            check_first: bool = True, max_errors: str | None = None,
            progress: str = "auto",
            wait: bool = False, lease_seconds: float = LEASE_SECONDS,
            results: Path | None = None, store_timeout: float = STORE_TIMEOUT) -> RunResult:
    suite = get_suite(sel.suite, tasks)
    check_selection(config, suite, sel)
    after_seq = _last_seq(db)  # before the keys: completions after it are the claims' to find
    done_keys = completed_keys(db, config, suite, sel)
    # what the providers serve for the run first (the bundled simulator): the plan's routes
    # go to them
    with providers.serving(config, sel.models) as bases:
        plan = make_plan(config, suite, sel, done_keys, bases, tasks_id=tasks_id(tasks))
        missing = missing_secrets(plan)
        if missing:  # before the log is created, before any request
            raise UserError("\n".join(missing))
        EventLog.open(db).close()  # create the log, or refuse a file that is not one, up front
        checks: dict[str, RouteCheck] = {}
        if check_first:  # a wrong key or deployment stops the run before any test
            quiet = progress == "none" or (json_output and progress == "auto")
            broken, checks = check_routes(plan, None if quiet else _say)
            if broken:
                raise RouteRefused("\n".join(broken))
        run_id = uuid.uuid4().hex[:12]
        failed = ""
        with EventLog.open(db) as log:
            log.retry_seconds = store_timeout
            log.append([RunStarted(
                run_id=run_id, argv=_without_passwords(argv), config_digest=config_digest,
                plan=PlanSummary(tests=plan.planned, shards=len(plan.shards),
                                 models=list(dict.fromkeys(s.model for s in plan.shards)),
                                 skipped_completed=plan.skipped_completed),
                conditions={s.condition: s.condition_fields for s in plan.shards},
                suite=suite.name, metrics=list(suite.metrics),
            ), *_checked_events(plan, run_id, checks)])
            latency = {sid: c.latency_s for sid, c in checks.items() if c.latency_s is not None}
            if processes is None:
                choice = choose_processes(plan, latency)
                processes = choice.processes
                if not (progress == "none" or (json_output and progress == "auto")):
                    _say(choice.line())
            snapshots, interrupted, crashed = _supervise(
                plan, run_id, sel, db, tasks, processes, latency=latency,
                progress="none" if json_output and progress == "auto" else progress,
                after_seq=after_seq, lease_seconds=lease_seconds, wait=wait,
                store_timeout=store_timeout, transcripts=config.run.transcripts)
            # The log failed under a shard process: it said why, and stopped its shards.
            lost = next((s.store_failed for s in snapshots.values() if s.store_failed), None)
            # A shard process that got SIGTERM (or Ctrl-C while we ignore it) was interrupted.
            interrupted = interrupted or (lost is None and any(s.interrupted for s in snapshots.values()))
            completed = sum(s.completed for s in snapshots.values())
            errored = sum(s.errored for s in snapshots.values())
            unstored = sum(s.unstored for s in snapshots.values())
            if lost is not None:  # no run.finished, no projection: the next run does both
                failed = (f"{lost}; {unstored} results not stored, the next run takes those"
                          " tests again")
            else:
                try:  # a full disk now fails the run (exit 1), and says why in one line
                    log.append([RunFinished(run_id=run_id, completed=completed, errored=errored,
                                            interrupted=interrupted)])
                except UserError as exc:
                    failed = str(exc)
    if not failed:
        try:
            project(db, out, results=results)
        except UserError as exc:
            failed = str(exc)
    if failed:
        say(failed)
    by_id = {s.shard_id: s for s in plan.shards}
    broken = [BrokenRoute(shard=s.shard, route=route_label(by_id[s.shard]), reason=s.broken)
              for s in snapshots.values() if s.broken]
    errors = [RouteErrors(shard=s.shard, route=route_label(by_id[s.shard]), reason=g.reason,
                          http_status=g.http_status, message=g.message, count=g.count)
              for s in snapshots.values() for g in s.errors]
    allowance = error_allowance(max_errors, plan.planned)
    return RunResult(
        run_id=run_id, planned=plan.planned, skipped_completed=plan.skipped_completed,
        completed=completed, errored=errored,
        succeeded=sum(s.succeeded for s in snapshots.values()), interrupted=interrupted,
        crashed_processes=crashed,
        not_taken=sum(s.not_taken for s in snapshots.values()),
        elsewhere=(elsewhere := sum(s.elsewhere for s in snapshots.values())),
        fenced=sum(s.fenced for s in snapshots.values()), unstored=unstored,
        shards=list(snapshots.values()), broken_routes=broken, errors=errors,
        tokens=_tokens(config, sel, plan, snapshots, checks), max_errors=allowance,
        shard_models={s.shard_id: s.model for s in plan.shards},
        db=str(db), out=str(out), results=str(results_path(out, results)),
        # tests another collector completed meanwhile are done, not owed by this run
        exit_code=max(exit_code(planned=plan.planned, completed=completed + elsewhere,
                                allowance=allowance, interrupted=interrupted, crashed=crashed,
                                broken=len(broken)),
                      1 if failed and not interrupted else 0),
    )


def _supervise(plan: Plan, run_id: str, sel: Selection, db: Path | str, tasks: str | None,
               processes: int, *, progress: str, after_seq: int = 0,
               lease_seconds: float = LEASE_SECONDS, wait: bool = False,
               store_timeout: float = STORE_TIMEOUT, transcripts: str = TRANSCRIPTS,
               latency: dict[str, float] | None = None,
               ) -> tuple[dict[str, ShardSnapshot], bool, int]:
    """Start the shard processes and follow them to the end; forward Ctrl-C / SIGTERM."""
    ctx = mp.get_context("spawn")
    snapshots = {s.shard_id: ShardSnapshot(shard=s.shard_id, planned=len(s.tests))
                 for s in plan.shards}
    procs = []
    readers: list[Connection] = []  # one progress pipe per child: its end of file is its exit
    for group in assign(plan.shards, processes, latency):
        job = ChildJob(run_id=run_id, db=str(db), suite=sel.suite, tasks=tasks, shards=group,
                       after_seq=after_seq, lease_seconds=lease_seconds, wait=wait,
                       store_timeout=store_timeout, transcripts=transcripts)
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child_main,
                        args=(msgspec.msgpack.encode(job), writer, os.getpid()), daemon=False)
        p.start()
        writer.close()  # the child holds the only write end
        procs.append(p)
        readers.append(reader)

    interrupted = False

    def on_term(signum, frame):  # SIGTERM to the parent behaves as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    display = Display(progress)  # type: ignore[arg-type]  # checked by the command line

    decoder = msgspec.msgpack.Decoder(list[ShardSnapshot])

    def drain(timeout: float) -> None:
        for conn in mp_wait(readers, timeout=timeout):
            assert isinstance(conn, Connection)
            try:
                while conn.poll():
                    for snap in decoder.decode(conn.recv_bytes()):
                        snapshots[snap.shard] = snap
            except (EOFError, OSError):
                readers.remove(conn)
                conn.close()

    try:
        with display:
            try:
                while any(p.is_alive() for p in procs):
                    drain(REPORT_SECONDS)
                    display.update(snapshots)
            except KeyboardInterrupt:
                interrupted = True
                for p in procs:
                    if p.is_alive() and p.pid is not None:
                        os.kill(p.pid, signal.SIGTERM)
                deadline = time.monotonic() + 60
                while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
                    with contextlib.suppress(KeyboardInterrupt):
                        drain(REPORT_SECONDS)
                        display.update(snapshots)
                for p in procs:
                    if p.is_alive():
                        p.kill()
            for p in procs:
                p.join()
            while readers:  # what the children sent last, up to each pipe's end
                drain(REPORT_SECONDS)
            display.update(snapshots)
    finally:
        signal.signal(signal.SIGTERM, previous)
    crashed = sum(1 for p in procs if p.exitcode not in (0, None))
    dead = [p.pid for p in procs if p.exitcode not in (0, None) and p.pid is not None]
    if dead:  # what a crashed child held is free now, not only once its leases expire
        with contextlib.suppress(UserError):  # the log is gone: the next run frees them
            with EventLog.open(db, create=False) as log:
                for pid in dead:
                    log.release_all(holder_id(run_id, pid))
    if interrupted:
        crashed = 0  # children ended by our own signal are not crashes
    return snapshots, interrupted, crashed


__all__ = ["check_routes", "execute", "missing_secrets", "PREFLIGHT_SAY_AFTER",
           "PREFLIGHT_SAY_EVERY"]
