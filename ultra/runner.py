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
import ctypes
import gc
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

import msgspec
import trio

from ultra.client import PREFLIGHT_TIMEOUT, RouteCheck, preflight
from ultra.config import Config, effective_model
from ultra.errors import RouteRefused, UserError, fail, say
from ultra.events import (
    Event,
    PlanSummary,
    Prices,
    RouteChecked,
    RunFinished,
    RunStarted,
    TestCompleted,
    TestErrored,
)
from ultra.defaults import LEASE_SECONDS, TRANSCRIPTS
from ultra.leases import ProcessLeases, holder_id, test_lease
from ultra.memory import TRIM_SECONDS, release_free_memory
from ultra.naming import canonical_model
from ultra.plan import Plan, Selection, Shard, check_selection, make_plan
from ultra.projecting import project, results_path
from ultra import providers
from ultra.resume import completed_keys, key_problems, tasks_id
from ultra.progress import Display
from ultra.shard import KeyBudget, ShardProgress, ShardSnapshot, run_shard
from ultra.store import STORE_TIMEOUT, EventLog, is_server_url
from ultra.suites import get_suite

BATCH_EVENTS = 500  # group commit: a batch, or
BATCH_SECONDS = 0.2  # this long after the first pending event, whichever first
REPORT_SECONDS = 0.25
ORPHAN_CHECK_SECONDS = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_INTERRUPTED = 130


class ChildJob(msgspec.Struct, kw_only=True):
    run_id: str
    db: str
    suite: str
    tasks: str | None
    shards: list[Shard]
    after_seq: int = 0  # the log's last seq when the plan was made (test claims check after it)
    lease_seconds: float = LEASE_SECONDS
    wait: bool = False  # wait for routes and tests other runs hold, instead of leaving them
    leases: bool = True  # hold routes and claim tests in the store (off: benchmarks only)
    store_timeout: float = STORE_TIMEOUT  # how long a lost log is waited for
    transcripts: str = TRANSCRIPTS  # whose transcripts are stored: all | failures | none


# ---- inside a shard process -------------------------------------------------------------


class StoreFailure:
    """The first storage error of a shard process (a `UserError` line) stops its shards:
    `halt` is the scope they run in."""

    def __init__(self, halt: trio.CancelScope) -> None:
        self.halt = halt
        self.line: str | None = None

    def __call__(self, exc: UserError) -> None:
        if self.line is None:
            self.line = str(exc)
        self.halt.cancel()


async def write_events(recv: trio.MemoryReceiveChannel, log: EventLog,
                       leases: ProcessLeases | None = None,
                       owners: dict[str, ShardProgress] | None = None,
                       failed: StoreFailure | None = None) -> None:
    """Group commit: append a batch when it is full or BATCH_SECONDS old; the claims of the
    tests it finishes are released in the same transaction. A test whose claim this process
    lost (it stalled past the lease) is not stored: counted as fenced in its shard's
    progress (`owners`: shard id -> progress), instead of completed or errored. While the
    store reconnects, events wait in the channel (claims wait too, so no new test starts).
    A batch the store refuses for good goes to `failed`, and it and every later event are
    counted as unstored."""
    async with recv:
        while True:
            try:
                batch: list[Event] = [await recv.receive()]
            except trio.EndOfChannel:
                return
            closed = await _fill(batch, recv)
            batch, transcripts = _split_transcripts(batch)
            try:
                if leases is None:
                    await trio.to_thread.run_sync(lambda: log.append(batch, transcripts=transcripts))
                else:  # the claims of the tests this batch finishes end with it
                    done = {test_lease(e.test_key): e.event_id for e in batch
                            if isinstance(e, TestCompleted)}
                    again = [test_lease(e.test_key) for e in batch if isinstance(e, TestErrored)]
                    stored = await trio.to_thread.run_sync(
                        lambda: log.append_held(batch, holder=leases.holder, release=again, done=done,
                                                transcripts=transcripts))
                    if stored.fenced:
                        leases.fenced += len(stored.fenced)
                        _uncount(batch, set(stored.fenced), owners or {}, "fenced")
            except UserError as exc:  # lost past the store's patience, or a full disk
                if failed is None:
                    raise
                failed(exc)
                _uncount(batch, None, owners or {}, "unstored")
                if not closed:
                    async for event in recv:  # until the stopped shards close the channel
                        _uncount(_split_transcripts([event])[0], None, owners or {}, "unstored")
                return
            if closed:
                return


async def _fill(batch: list, recv: trio.MemoryReceiveChannel) -> bool:
    """Add to `batch` what the channel holds, then what arrives within BATCH_SECONDS of
    the first, up to BATCH_EVENTS; True once the channel is closed. What is already there
    is taken without a checkpoint: each `receive` is a schedule point, behind every
    runnable worker, and taking a backlog one scheduler round per event let it grow
    without bound (memory rising with the run; the log falling behind)."""
    deadline = trio.current_time() + BATCH_SECONDS
    while len(batch) < BATCH_EVENTS:
        try:
            batch.append(recv.receive_nowait())
            continue
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            return True
        with trio.move_on_at(deadline) as waited:
            try:
                batch.append(await recv.receive())
            except trio.EndOfChannel:
                return True
        if waited.cancelled_caught:
            break
    return False


def _split_transcripts(items: list) -> tuple[list[Event], dict[str, tuple[str, bytes]]]:
    """A batch's events, and the transcripts some came with (`(event, (digest, bytes))`
    items, see `shard.run_shard`) by event id."""
    if not any(type(item) is tuple for item in items):
        return items, {}
    events: list[Event] = []
    transcripts: dict[str, tuple[str, bytes]] = {}
    for item in items:
        if type(item) is tuple:
            event, transcripts[item[0].event_id] = item
            item = event
        events.append(item)
    return events, transcripts


def _uncount(batch: list[Event], keys: set[str] | None, owners: dict[str, ShardProgress],
             field: str) -> None:
    """The results in `batch` (of `keys`, or all) were not stored: counted under `field`
    of their shard's progress instead of completed or errored."""
    for e in batch:
        progress = owners.get(e.shard_id) if isinstance(e, (TestCompleted, TestErrored)) else None
        if progress is None or (keys is not None and e.test_key not in keys):
            continue
        setattr(progress, field, getattr(progress, field) + 1)
        if isinstance(e, TestCompleted):
            progress.completed -= 1
            progress.succeeded -= e.result.outcome != "failure"
        else:
            progress.errored -= 1


async def _cancel_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:  # Ctrl-C reaches us and the parent forwards SIGTERM: both
            scope.cancel()


async def _report_loop(progresses: list[ShardProgress],
                       report: Callable[[list[ShardSnapshot]], None]) -> None:
    """Send the parent a snapshot every REPORT_SECONDS; every TRIM_SECONDS give the heap's
    free pages back (`ultra.memory`), so the process's memory stays flat however long
    the run."""
    trimmed = trio.current_time()
    while True:
        await trio.sleep(REPORT_SECONDS)
        report([p.snapshot() for p in progresses])
        if trio.current_time() - trimmed >= TRIM_SECONDS:
            release_free_memory()
            trimmed = trio.current_time()


async def _cancel_when_orphaned(scope: trio.CancelScope, parent_alive: Callable[[], bool]) -> None:
    """The parent-death signal's backstop (it can arrive before trio listens, or not at all
    off Linux): a parent that is gone ends the run as an interrupt would."""
    while parent_alive():
        await trio.sleep(ORPHAN_CHECK_SECONDS)
    scope.cancel()


@contextlib.contextmanager
def _gc_for_dispatch() -> Iterator[None]:
    """A shard process allocates thousands of short-lived objects per request and keeps its
    start-up objects (modules, the suite's task library) for its whole life: freeze what
    exists, so that no collection walks them again, and collect the young generation 20x less often: 7-20 % less CPU
    per request in side-by-side runs of one seed-load shard process. Restored afterwards."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


async def run_process(job: ChildJob, report: Callable[[list[ShardSnapshot]], None],
                      parent_alive: Callable[[], bool] | None = None) -> None:
    """Run a process's shards to the end (or to a signal, or the parent's death),
    committing every event."""
    with _gc_for_dispatch():
        await _run_process(job, report, parent_alive)


async def _run_process(job: ChildJob, report: Callable[[list[ShardSnapshot]], None],
                       parent_alive: Callable[[], bool] | None) -> None:
    suite = get_suite(job.suite, job.tasks)
    progresses = [ShardProgress(s) for s in job.shards]
    # One pacer per shared key budget: `assign` put all shards of a key in this process.
    shared_limiters = {s.shared_limit.name: KeyBudget(s.shared_limit.qps, s.shared_limit.tpm)
                       for s in job.shards if s.shared_limit}
    failed = StoreFailure(halt := trio.CancelScope())
    with EventLog.open(job.db) as log:
        log.retry_seconds = job.store_timeout
        leases = None
        try:
            if job.leases:
                leases = ProcessLeases(log, job.run_id, ttl=job.lease_seconds,
                                       after_seq=job.after_seq, wait=job.wait, failed=failed)
            send, recv = trio.open_memory_channel[Event](math.inf)
            async with trio.open_nursery() as outer:
                owners = {s.shard_id: p for s, p in zip(job.shards, progresses)}
                outer.start_soon(write_events, recv, log, leases, owners, failed)
                async with trio.open_nursery() as aux:
                    async with send:
                        with halt:
                            async with trio.open_nursery() as work:
                                aux.start_soon(_cancel_on_signal, work.cancel_scope)
                                aux.start_soon(_report_loop, progresses, report)
                                if parent_alive is not None:
                                    aux.start_soon(_cancel_when_orphaned, work.cancel_scope, parent_alive)
                                if leases is not None:
                                    aux.start_soon(leases.heartbeat, work.cancel_scope)
                                for shard, progress in zip(job.shards, progresses):
                                    shared = shared_limiters.get(shard.shared_limit.name) if shard.shared_limit else None
                                    work.start_soon(run_shard, shard, suite, job.run_id,
                                                    send.send_nowait, progress, shared, leases,
                                                    job.transcripts)
                    aux.cancel_scope.cancel()
        except UserError as exc:  # from a claim before any shard started
            failed(exc)
        finally:
            # After the last commit every claim left is unfinished work; if the log failed,
            # the next run frees them (their holder is gone).
            if leases is not None and failed.line is None:
                with contextlib.suppress(UserError):  # lost only now: as if this process died
                    leases.release_all()
            if leases is not None:
                if leases.lost:
                    print(f"ultra: lost the lease of {', '.join(sorted(leases.lost))} (this process"
                          " stalled longer than the lease); stopped its shards", file=sys.stderr)
                if leases.fenced:
                    print(f"ultra: dropped the results of {leases.fenced} tests whose claims"
                          " another collector took while this process stalled", file=sys.stderr)
    for p in progresses:
        p.store_failed = failed.line
    report([p.snapshot() for p in progresses])


class _Reporter:
    """The child's end of its progress pipe. A thread sends the latest snapshots, so no trio
    task ever blocks on a full pipe (older snapshots are simply replaced); a broken pipe
    means the parent is gone."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._latest: bytes | None = None
        self._closing = False
        self._cv = threading.Condition()
        self.broken = False
        self._thread = threading.Thread(target=self._send_loop, daemon=True)
        self._thread.start()

    def __call__(self, snaps: list[ShardSnapshot]) -> None:
        with self._cv:
            self._latest = msgspec.msgpack.encode(snaps)
            self._cv.notify()

    def _send_loop(self) -> None:
        while True:
            with self._cv:
                while self._latest is None and not self._closing:
                    self._cv.wait()
                data, self._latest = self._latest, None
            if data is None:
                return
            try:
                self._conn.send_bytes(data)
            except (OSError, ValueError, TypeError):  # broken pipe, or closed under us
                self.broken = True
                return

    def close(self, timeout: float) -> None:
        """Deliver the last snapshots if the parent still reads, within `timeout`."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout)


def _die_with_parent() -> None:
    """Linux: SIGTERM to this process when its parent dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _child_main(payload: bytes, progress: Connection, parent_pid: int) -> None:
    # Outside the signal receiver's scope (start-up, the final flush) a signal must not kill
    # the process mid-commit: ignore them there. A stuck child is still SIGKILLed by the parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    reporter = _Reporter(progress)

    def parent_alive() -> bool:
        return os.getppid() == parent_pid and not reporter.broken

    if not parent_alive():
        return  # the parent died while this process started: nothing of ours runs
    job = msgspec.msgpack.decode(payload, type=ChildJob)
    try:
        trio.run(run_process, job, reporter, parent_alive)
    except (UserError, BaseExceptionGroup) as exc:
        user = _user_error(exc)  # trio groups the errors of a nursery's tasks
        if user is None:
            raise
        fail(user)
    finally:
        reporter.close(timeout=2.0)


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


# Before a route has answered (`ultra plan`), a request is taken to last this long: a chat
# completion seldom comes back in under a second. `ultra run` uses each route's preflight.
ASSUMED_LATENCY_S = 1.0
MIN_LATENCY_S = 0.001  # a loopback answer in microseconds drives no more than this


def offered_rps(shard: Shard, latency: float | None = None) -> float:
    """The request rate a shard can drive: its qps limit, or its workers each sending one
    request after another of `latency` seconds (assumed 1 s), whichever binds."""
    per_worker = 1.0 / max(MIN_LATENCY_S, latency if latency is not None else ASSUMED_LATENCY_S)
    return min(shard.qps, shard.workers * per_worker)


def assign(shards: list[Shard], processes: int,
           latency: dict[str, float] | None = None) -> list[list[Shard]]:
    """The busiest work first onto the least-loaded process, balanced by the request rate
    (a process's CPU goes per request), then by planned tests. Shards that share a key
    budget travel together: their pacer lives in one process."""
    units: dict[str, list[Shard]] = {}
    for s in shards:
        units.setdefault(s.shared_limit.name if s.shared_limit else s.shard_id, []).append(s)
    seconds = latency or {}

    def load(unit: list[Shard]) -> tuple[float, int]:
        return sum(offered_rps(s, seconds.get(s.shard_id)) for s in unit), sum(len(s.tests) for s in unit)

    groups: list[list[Shard]] = [[] for _ in range(max(1, processes))]
    loads = [(0.0, 0)] * len(groups)
    for unit in sorted(units.values(), key=load, reverse=True):
        i = loads.index(min(loads))
        groups[i].extend(unit)
        rps, tests = load(unit)
        loads[i] = (loads[i][0] + rps, loads[i][1] + tests)
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
    not_taken: int = 0  # held by other runs when this one stopped (see the shards' held_by)
    elsewhere: int = 0  # completed by another collector after this run's plan
    fenced: int = 0  # results dropped: this run lost their tests' claims while it stalled
    unstored: int = 0  # results lost with the event log (it failed mid-run): taken again next run
    shards: list[ShardSnapshot]
    broken_routes: list[BrokenRoute] = []
    errors: list[RouteErrors] = []
    tokens: list[ModelTokens] = []
    max_errors: int = 0  # errored tests accepted (--max-errors) before the exit code is 1
    shard_models: dict[str, str] = {}  # shard id -> canonical model
    db: str
    out: str
    exit_code: int
    results: str = ""  # results.db, projected with `out` at the end

    def held(self) -> list[str]:
        """One line per shard that left tests to other runs: how many, and which runs."""
        return [f"{s.shard}: {s.not_taken} tests not taken, held by run {', '.join(s.held_by)}"
                for s in self.shards if s.not_taken]


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
    from ultra.store_postgres import redacted

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


# What a request costs a shard process in CPU (client, executor, event: calibrated with
# tools/bench_dispatch.py --seed-load, docs/benchmarks.md), and the share of a core one is
# planned to use (the rest: bursts, the event writer, the parent): 500 requests/s each.
CPU_PER_REQUEST_S = 0.0014
PROCESS_CPU_SHARE = 0.7
YOUNG_GC_THRESHOLD = 14_000  # allocations between young collections in a shard process


class ProcessChoice(msgspec.Struct, frozen=True):
    """How many shard processes a run starts by default, and why."""

    processes: int
    offered_rps: float  # what the shards' workers can drive (within their qps)
    cpu_per_request_ms: float
    measured: bool  # from the routes' preflight latency (else ASSUMED_LATENCY_S)

    def line(self) -> str:
        basis = "the routes' preflight latency" if self.measured else \
            f"an assumed {ASSUMED_LATENCY_S:g} s per request"
        return (f"{self.processes} shard process{'es' if self.processes != 1 else ''}:"
                f" {self.offered_rps:,.0f} requests/s offered at {basis},"
                f" {self.cpu_per_request_ms:g} ms of CPU each (--processes sets it)")


def choose_processes(plan: Plan, latency: dict[str, float] | None = None) -> ProcessChoice:
    """Shard processes for the plan's load: the CPU its offered rate costs over the share
    of a core one process is given; at least 1, at most one per CPU (and per shard). A
    small run starts one process; a fast server with many workers gets more."""
    latency = latency or {}
    offered = sum(offered_rps(s, latency.get(s.shard_id)) for s in plan.shards)
    cpus = math.ceil(offered * CPU_PER_REQUEST_S / PROCESS_CPU_SHARE - 1e-9)
    n = max(1, min(os.cpu_count() or 1, len(plan.shards), cpus))
    return ProcessChoice(processes=n, offered_rps=offered,
                         cpu_per_request_ms=CPU_PER_REQUEST_S * 1000, measured=bool(latency))


def needed_processes(plan: Plan, latency: dict[str, float] | None = None) -> int:
    return choose_processes(plan, latency).processes


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


__all__ = ["assign", "ASSUMED_LATENCY_S", "BATCH_EVENTS", "BATCH_SECONDS", "BrokenRoute",
           "check_routes", "ChildJob", "choose_processes", "CPU_PER_REQUEST_S",
           "error_allowance", "execute", "exit_code", "EXIT_INTERRUPTED", "MIN_LATENCY_S",
           "missing_secrets", "ModelTokens", "needed_processes", "offered_rps",
           "ORPHAN_CHECK_SECONDS", "PR_SET_PDEATHSIG", "PREFLIGHT_SAY_AFTER",
           "PREFLIGHT_SAY_EVERY", "PROCESS_CPU_SHARE", "ProcessChoice", "REPORT_SECONDS",
           "route_label", "RouteErrors", "run_process", "RunResult", "StoreFailure",
           "write_events", "YOUNG_GC_THRESHOLD"]
