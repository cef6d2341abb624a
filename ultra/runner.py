"""`ultra run`: plan, start shard processes, show progress, record the run, project.

The parent plans and supervises; each child process runs several shards as trio tasks
and owns one group-commit writer into the shared SQLite log. Children share nothing but
the log and a queue of progress snapshots. Ctrl-C / SIGTERM: every child cancels its
in-flight tests, commits what is pending, writes `shard.finished(interrupted)`; the parent
then records `run.finished(interrupted)`, projects, and exits 130.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
import trio

from ultra.client import preflight
from ultra.config import Config, effective_model
from ultra.errors import UserError
from ultra.events import Event, PlanSummary, RunFinished, RunStarted
from ultra.naming import canonical_model
from ultra.plan import Plan, Selection, Shard, check_selection, make_plan
from ultra.projecting import project
from ultra.resume import completed_keys, completed_test_keys, plan_run  # noqa: F401 (re-exported)
from ultra.progress import Display
from ultra.shard import KeyBudget, ShardProgress, ShardSnapshot, run_shard
from ultra.store import EventLog
from ultra.suites import get_suite

BATCH_EVENTS = 500  # group commit: a batch, or
BATCH_SECONDS = 0.2  # this long after the first pending event, whichever first
REPORT_SECONDS = 0.25
EXIT_INTERRUPTED = 130


class ChildJob(msgspec.Struct, kw_only=True):
    run_id: str
    db: str
    suite: str
    tasks: str | None
    shards: list[Shard]


# ---- inside a shard process -------------------------------------------------------------


async def write_events(recv: trio.MemoryReceiveChannel, log: EventLog) -> None:
    """Group commit: append a batch when it is full or BATCH_SECONDS old."""
    async with recv:
        while True:
            try:
                batch: list[Event] = [await recv.receive()]
            except trio.EndOfChannel:
                return
            closed = False
            with trio.move_on_after(BATCH_SECONDS):
                while len(batch) < BATCH_EVENTS:
                    try:
                        batch.append(await recv.receive())
                    except trio.EndOfChannel:
                        closed = True
                        break
            await trio.to_thread.run_sync(log.append, batch)
            if closed:
                return


async def _cancel_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:  # Ctrl-C reaches us and the parent forwards SIGTERM: both
            scope.cancel()


async def _report_loop(progresses: list[ShardProgress],
                       report: Callable[[list[ShardSnapshot]], None]) -> None:
    while True:
        await trio.sleep(REPORT_SECONDS)
        report([p.snapshot() for p in progresses])


async def run_process(job: ChildJob, report: Callable[[list[ShardSnapshot]], None]) -> None:
    """Run a process's shards to the end (or to a signal), committing every event."""
    suite = get_suite(job.suite, job.tasks)
    progresses = [ShardProgress(s) for s in job.shards]
    # One pacer per shared key budget: `assign` put all shards of a key in this process.
    shared_limiters = {s.shared_limit.name: KeyBudget(s.shared_limit.qps, s.shared_limit.tpm)
                       for s in job.shards if s.shared_limit}
    with EventLog.open(job.db) as log:
        send, recv = trio.open_memory_channel[Event](math.inf)
        async with trio.open_nursery() as outer:
            outer.start_soon(write_events, recv, log)
            async with trio.open_nursery() as aux:
                async with send:
                    async with trio.open_nursery() as work:
                        aux.start_soon(_cancel_on_signal, work.cancel_scope)
                        aux.start_soon(_report_loop, progresses, report)
                        for shard, progress in zip(job.shards, progresses):
                            shared = shared_limiters.get(shard.shared_limit.name) if shard.shared_limit else None
                            work.start_soon(run_shard, shard, suite, job.run_id,
                                            send.send_nowait, progress, shared)
                aux.cancel_scope.cancel()
    report([p.snapshot() for p in progresses])


def _child_main(payload: bytes, progress_queue: mp.Queue) -> None:
    # Outside the signal receiver's scope (start-up, the final flush) a signal must not kill
    # the process mid-commit: ignore them there. A stuck child is still SIGKILLed by the parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    job = msgspec.msgpack.decode(payload, type=ChildJob)
    try:
        trio.run(run_process, job, progress_queue.put)
    except (UserError, BaseExceptionGroup) as exc:
        user = _user_error(exc)  # trio groups the errors of a nursery's tasks
        if user is None:
            raise
        print(f"ultra: error: {user}", file=sys.stderr)
        raise SystemExit(2) from None


def _user_error(exc: BaseException) -> UserError | None:
    """The first UserError in `exc` or its (nested) exception groups."""
    if isinstance(exc, UserError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _user_error(inner)
        if found is not None:
            return found
    return None


# ---- the parent ---------------------------------------------------------------------------


def assign(shards: list[Shard], processes: int) -> list[list[Shard]]:
    """Longest work first onto the least-loaded process (balanced by planned tests).
    Shards that share a key budget travel together: their pacer lives in one process."""
    units: dict[str, list[Shard]] = {}
    for s in shards:
        units.setdefault(s.shared_limit.name if s.shared_limit else s.shard_id, []).append(s)
    groups: list[list[Shard]] = [[] for _ in range(max(1, processes))]
    loads = [0] * len(groups)
    for unit in sorted(units.values(), key=lambda u: -sum(len(s.tests) for s in u)):
        i = loads.index(min(loads))
        groups[i].extend(unit)
        loads[i] += sum(len(s.tests) for s in unit)
    return [g for g in groups if g]


class BrokenRoute(msgspec.Struct, kw_only=True):
    shard: str
    route: str  # provider, model and key index or deployment: never the key
    reason: str  # "HTTP 401: <the server's message>", or why it could not be reached


class RouteErrors(msgspec.Struct, kw_only=True):
    """Errored tests of one route with one reason, status and server message."""

    shard: str
    route: str
    reason: str
    http_status: int | None
    message: str
    count: int


class ModelTokens(msgspec.Struct, kw_only=True):
    model: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost: float | None  # from the config's prices per million tokens, when it gives them


class RunResult(msgspec.Struct, kw_only=True):
    run_id: str
    planned: int
    skipped_completed: int
    completed: int
    errored: int
    succeeded: int
    interrupted: bool
    crashed_processes: int
    shards: list[ShardSnapshot]
    broken_routes: list[BrokenRoute] = []
    errors: list[RouteErrors] = []
    tokens: list[ModelTokens] = []
    max_errors: int = 0  # errored tests accepted (--max-errors) before the exit code is 1
    shard_models: dict[str, str] = {}  # shard id -> canonical model
    db: str
    out: str
    exit_code: int


def route_label(s: Shard) -> str:
    """Where a shard's requests go, for a person: provider, model, key index or deployment."""
    where = f"key {s.key_index}" if s.key_index is not None else f"deployment {s.deployment!r}"
    return f"provider {s.provider!r}, model {s.model!r}, {where}"


def error_allowance(spec: str | None, planned: int) -> int:
    """Errored tests accepted by `--max-errors N` or `--max-errors P%` for a run of `planned`."""
    if spec is None:
        return 0
    text = spec.strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 <= share <= 100:
                raise ValueError
            return math.floor(share * planned / 100 + 1e-9)
        count = int(text)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise UserError(f"invalid --max-errors {spec!r} (a count such as 10, or a share such as 5%)") from None


def exit_code(*, planned: int, completed: int, allowance: int, interrupted: bool, crashed: int,
              broken: int) -> int:
    """0 only when every planned test completed (or the shortfall is within --max-errors);
    1 when tests errored, a route broke or a shard process crashed; 130 when interrupted."""
    if interrupted:
        return EXIT_INTERRUPTED
    if crashed or broken or planned - completed > allowance:
        return 1
    return 0


def check_routes(plan: Plan) -> list[str]:
    """One cheap request per route that has tests, all at once: a line per broken route."""
    shards = [s for s in plan.shards if s.tests]
    checks: dict[str, object] = {}

    async def check(s: Shard) -> None:
        checks[s.shard_id] = await preflight(
            s.route, s.options, request_timeout=s.request_timeout, max_retries=s.max_retries,
            deadline=trio.current_time() + s.test_timeout)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for s in shards:
                nursery.start_soon(check, s)

    trio.run(main)
    lines = []
    for s in shards:
        c = checks[s.shard_id]
        if not c.ok:  # type: ignore[attr-defined]
            status = f"HTTP {c.http_status}" if c.http_status else "no answer"  # type: ignore[attr-defined]
            lines.append(f"route broken at preflight: {route_label(s)}: {status}: {c.message}")  # type: ignore[attr-defined]
    return lines


def _tokens(config: Config, sel: Selection, plan: Plan,
            snapshots: dict[str, ShardSnapshot]) -> list[ModelTokens]:
    """Tokens per model over every request of the run, and their cost at the config's prices."""
    by_model: dict[str, list[int]] = {}
    for s in plan.shards:
        snap = snapshots[s.shard_id]
        sums = by_model.setdefault(s.model, [0, 0, 0])
        sums[0] += snap.prompt_tokens
        sums[1] += snap.completion_tokens
        sums[2] += snap.reasoning_tokens
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


def _uses_bundled_sim(config: Config, models: list[str]) -> bool:
    return any(
        config.providers[config.models[m].provider].kind == "sim"
        and not config.providers[config.models[m].provider].url
        for m in models
    )


@contextlib.contextmanager
def _simulator(config: Config, models: list[str]):
    """Start the bundled simulator when a selected sim provider has no url of its own."""
    if not _uses_bundled_sim(config, models):
        yield None
        return
    from ultra.sim.process import SimProcess

    with SimProcess(config.sim) as sim:
        yield sim.url


def missing_secrets(plan: Plan) -> list[str]:
    """The key variables that the planned routes read but the environment lacks (or holds
    something no HTTP header can carry)."""
    missing: dict[str, str] = {}
    for s in plan.shards:
        env = s.route.key_env
        value = os.environ.get(env) if env else None
        if env and not value:
            missing[env] = f"provider {s.provider!r}: environment variable {env} is not set"
        elif env and value and not (value.isascii() and value.isprintable()):
            # An HTTP header cannot carry it: refused here, before any shard process starts.
            missing[env] = (f"provider {s.provider!r}: environment variable {env} holds characters"
                            " an API key cannot have (non-ASCII or control characters); check it")
    return list(missing.values())


# What one shard process drives with room to spare, in requests/s offered (the sum of its
# shards' qps): tools/bench_dispatch.py --seed-load.
PROCESS_RPS = 500.0


def needed_processes(plan: Plan) -> int:
    """Shard processes for the plan's load: its offered rate over what one process drives,
    at least 1, at most one per CPU (and per shard). A small run starts one process."""
    offered = sum(s.qps for s in plan.shards)
    return max(1, min(os.cpu_count() or 1, len(plan.shards), math.ceil(offered / PROCESS_RPS)))


def execute(config: Config, config_digest: str, sel: Selection, *, db: Path | str, out: Path,
            processes: int | None, tasks: str | None, argv: list[str], json_output: bool,
            check_first: bool = True, max_errors: str | None = None,
            progress: str = "auto") -> RunResult:
    suite = get_suite(sel.suite, tasks)
    check_selection(config, suite, sel)
    done_keys = completed_keys(db, config, suite, sel)
    plan = make_plan(config, suite, sel, done_keys)
    missing = missing_secrets(plan)
    if missing:  # before anything is created or started
        raise UserError("\n".join(missing))
    EventLog.open(db).close()  # create the log, or refuse a file that is not one, up front
    with _simulator(config, sel.models) as sim_url:
        if sim_url:  # routes to the simulator we just started
            plan = make_plan(config, suite, sel, done_keys, sim_url)
        if check_first:  # a wrong key or deployment stops the run before any test
            broken = check_routes(plan)
            if broken:
                raise UserError("\n".join(broken))
        run_id = uuid.uuid4().hex[:12]
        failed = ""
        with EventLog.open(db) as log:
            log.append([RunStarted(
                run_id=run_id, argv=argv, config_digest=config_digest,
                plan=PlanSummary(tests=plan.planned, shards=len(plan.shards),
                                 models=list(dict.fromkeys(s.model for s in plan.shards)),
                                 skipped_completed=plan.skipped_completed),
            )])
            snapshots, interrupted, crashed = _supervise(
                plan, run_id, sel, db, tasks, processes or needed_processes(plan),
                progress="none" if json_output and progress == "auto" else progress)
            # A shard process that got SIGTERM (or Ctrl-C while we ignore it) was interrupted.
            interrupted = interrupted or any(s.interrupted for s in snapshots.values())
            completed = sum(s.completed for s in snapshots.values())
            errored = sum(s.errored for s in snapshots.values())
            try:  # a full disk now fails the run (exit 1), and says why in one line
                log.append([RunFinished(run_id=run_id, completed=completed, errored=errored,
                                        interrupted=interrupted)])
            except UserError as exc:
                failed = str(exc)
    if not failed:
        try:
            project(db, out)
        except UserError as exc:
            failed = str(exc)
    if failed:
        print(f"ultra: error: {failed}", file=sys.stderr)
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
        shards=list(snapshots.values()), broken_routes=broken, errors=errors,
        tokens=_tokens(config, sel, plan, snapshots), max_errors=allowance,
        shard_models={s.shard_id: s.model for s in plan.shards},
        db=str(db), out=str(out),
        exit_code=max(exit_code(planned=plan.planned, completed=completed, allowance=allowance,
                                interrupted=interrupted, crashed=crashed, broken=len(broken)),
                      1 if failed and not interrupted else 0),
    )


def _supervise(plan: Plan, run_id: str, sel: Selection, db: Path | str, tasks: str | None,
               processes: int, *, progress: str) -> tuple[dict[str, ShardSnapshot], bool, int]:
    """Start the shard processes and follow them to the end; forward Ctrl-C / SIGTERM."""
    ctx = mp.get_context("spawn")
    progress_queue: mp.Queue = ctx.Queue()
    snapshots = {s.shard_id: ShardSnapshot(shard=s.shard_id, planned=len(s.tests))
                 for s in plan.shards}
    procs = []
    for group in assign(plan.shards, processes):
        job = ChildJob(run_id=run_id, db=str(db), suite=sel.suite, tasks=tasks, shards=group)
        p = ctx.Process(target=_child_main, args=(msgspec.msgpack.encode(job), progress_queue),
                        daemon=False)
        p.start()
        procs.append(p)

    interrupted = False

    def on_term(signum, frame):  # SIGTERM to the parent behaves as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    display = Display(progress)  # type: ignore[arg-type]  # checked by the command line

    def drain(timeout: float) -> None:
        try:
            while True:
                for snap in progress_queue.get(timeout=timeout):
                    snapshots[snap.shard] = snap
                timeout = 0.0
        except queue_mod.Empty:
            pass

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
            drain(0.0)
            display.update(snapshots)
    finally:
        signal.signal(signal.SIGTERM, previous)
    crashed = sum(1 for p in procs if p.exitcode not in (0, None))
    if interrupted:
        crashed = 0  # children ended by our own signal are not crashes
    return snapshots, interrupted, crashed
