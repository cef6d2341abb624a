"""Inside a shard process: its shards as trio tasks, one group-commit writer into the
log, progress snapshots to the parent over a pipe, and the ways it ends (a signal, the
parent's death, the log failing). `ultra.collect.runner` starts these processes and follows them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

import msgspec
import trio

from ultra.errors import UserError, fail
from ultra.events import Event, TestCompleted, TestErrored
from ultra.defaults import LEASE_SECONDS, TRANSCRIPTS
from ultra.collect.leases import ProcessLeases, test_lease
from ultra.memory import TRIM_SECONDS, release_free_memory, single_arena
from ultra.collect.plan import Shard
from ultra.collect.shard import KeyBudget, ShardProgress, ShardSnapshot, run_shard
from ultra.eventlog.store import STORE_TIMEOUT, EventLog
from ultra.suites import get_suite

BATCH_EVENTS = 500  # group commit: a batch, or
BATCH_SECONDS = 0.2  # this long after the first pending event, whichever first
REPORT_SECONDS = 0.25
ORPHAN_CHECK_SECONDS = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
YOUNG_GC_THRESHOLD = 14_000  # allocations between young collections in a shard process


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
    single_arena()  # before the store's threads start
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


__all__ = ["BATCH_EVENTS", "BATCH_SECONDS", "ChildJob", "ORPHAN_CHECK_SECONDS",
           "PR_SET_PDEATHSIG", "REPORT_SECONDS", "run_process", "StoreFailure", "write_events",
           "YOUNG_GC_THRESHOLD"]
