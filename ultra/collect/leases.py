"""Leases of one collector process: its routes and the tests it is running.

A collector holds a route's lease (one key of a gateway, one deployment) while it sends on
it, and claims each test before running it (a batch of tests in one transaction), so per-route limits (a provider's `key_qps`
included) hold across collectors and no test runs twice at once. Leases live in the
store's `leases` table, not in the immutable log; a heartbeat renews them every
`ttl / HEARTBEATS_PER_TTL` seconds, and they expire `ttl` seconds after the last renewal
when their holder dies. A lease also records its holder's host, pid and start time
(ultra/collect/liveness.py): on the same host a dead holder's leases are freed at once (when a
collector starts, and when it finds a claim held), so a crashed run resumes at once;
across hosts the ttl decides.

Fencing: a test's events are stored only while their collector still holds its claim,
checked in the storing transaction (`EventLog.append_held`); a collector that stalled
past its lease and lost a claim to another has those events dropped and counted.

Default ttl 30 s, renewed every 5 s: a collector may stall for 25 s (a GC pause, a swapped
or overloaded machine, a database failover) without losing its routes, and a crashed
collector's routes and tests are free again half a minute later, which is short beside a
collection of hours and long beside any one renewal round trip.

A test claim ends in the transaction that stores the test's event, so there is no moment
when a finished test is neither claimed nor stored: an errored test's claim is dropped (it
is taken again), a completed test's claim stays as a mark of the completion's seq, and a
collector whose plan is older than that mark is told the test is done (no search of the
log). Marks that no running plan predates are dropped when a collector process ends.

The store waits for a lost log itself (`EventLog.retry_seconds`); a claim or renewal that
fails for good (`UserError`: the log lost past that, a full disk) goes to `failed`, which
stops the process's shards: the calling shard is cancelled at once, as by an interrupt.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import trio

from ultra.defaults import CLAIM_BATCH
from ultra.errors import UserError

from ultra.collect.plan import Shard
from ultra.eventlog.lease_table import DONE
from ultra.eventlog.store import EventLog
from ultra.suites import TestSpec

if TYPE_CHECKING:
    from ultra.collect.shard import ShardProgress

HEARTBEATS_PER_TTL = 6
WAIT_POLL = 1.0  # how often a waiting collector asks again for a held route or test


def holder_id(run_id: str, pid: int | None = None) -> str:
    """One collector process: its run, host and pid (a holder is never shared)."""
    return f"{run_id}/{socket.gethostname()}/{os.getpid() if pid is None else pid}"


def route_lease(shard: Shard) -> str:
    """What a shard's requests spend: a shared key budget when the provider limits keys,
    else the shard's own route (key or deployment) of its provider."""
    if shard.shared_limit is not None:
        return f"route:{shard.shared_limit.name}"
    return f"route:{shard.provider}/{shard.instance}"


def test_lease(test_key: str) -> str:
    return f"test:{test_key}"


class ProcessLeases:
    """The leases of one shard process, over its one store connection (calls in threads)."""

    def __init__(self, log: EventLog, run_id: str, *, ttl: float, after_seq: int,
                 wait: bool, failed: Callable[[UserError], None] | None = None) -> None:
        self.log = log
        self.run_id = run_id
        self.holder = holder_id(run_id)
        self.ttl = ttl
        self.after_seq = after_seq  # completions after this seq were not known to the plan
        self.wait = wait
        self.failed = failed  # told of a storage error that stops the process (else raised)
        self._routes: Counter[str] = Counter()  # route lease -> shards of ours using it
        self.lost: set[str] = set()
        self.fenced = 0  # tests whose events were dropped: another collector took the claim
        self._freed_at = float("-inf")  # when we last looked for dead holders on a conflict
        log.free_dead_holders()  # a crashed run on this host holds nothing any more
        # Our plan's seq, held while we live (also while waiting for routes), so that the
        # completion marks made after it are kept for us.
        log.claim(f"plan:{self.holder}", self.holder, run_id, ttl, plan_seq=after_seq)

    async def _store(self, fn: Callable[..., object], *args: object) -> object:
        """`fn(*args)` in a thread; a storage error goes to `failed`, which cancels the
        caller's scope (so this raises trio.Cancelled there)."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except UserError as exc:
            if self.failed is None:
                raise
            self.failed(exc)
            await trio.lowlevel.checkpoint()
            raise

    async def _claim(self, name: str) -> str | None:
        return (await self._claim_all([name]))[name]

    async def _claim_all(self, names: list[str]) -> dict[str, str | None]:
        def claim(names: list[str]) -> dict[str, str | None]:
            return self.log.claim_many(names, self.holder, self.run_id, self.ttl,
                                       plan_seq=self.after_seq)

        found: dict[str, str | None] = await self._store(claim, names)  # type: ignore[assignment]
        held = [n for n, why in found.items() if why is not None and why != DONE]
        if not held or trio.current_time() - self._freed_at < WAIT_POLL:
            return found
        # Held by another run: if that run died on this host meanwhile, its claims are free.
        self._freed_at = trio.current_time()
        if await self._store(self.log.free_dead_holders):
            found.update(await self._store(claim, held))  # type: ignore[arg-type]
        return found

    async def hold_route(self, shard: Shard, progress: ShardProgress) -> bool:
        """Hold the shard's route (with `wait`, wait until it is free). False when another
        run holds it: then none of the shard's tests is taken, and `progress` says by whom."""
        name = route_lease(shard)
        while True:
            why = await self._claim(name)
            if why is None:
                self._routes[name] += 1
                return True
            if not self.wait:
                progress.not_taken = len(shard.tests)
                progress.held_by.add(why)
                return False
            await trio.sleep(WAIT_POLL)

    async def drop_route(self, shard: Shard) -> None:
        name = route_lease(shard)
        if self._routes[name] <= 0:
            return
        self._routes[name] -= 1
        if self._routes[name] == 0:
            del self._routes[name]
            with trio.CancelScope(shield=True):  # also on the way out of a cancelled shard
                try:
                    await trio.to_thread.run_sync(self.log.release, [name], self.holder)
                except UserError as exc:
                    if self.failed is None:
                        raise
                    self.failed(exc)  # the route is freed with the process's other leases

    async def take_tests(self, test_keys: list[str]) -> dict[str, str | None]:
        """For each key, None when the test is ours to run; DONE when another collector
        completed it; else the run id that holds it now. One transaction for them all."""
        found = await self._claim_all([test_lease(k) for k in test_keys])
        return {k: found[test_lease(k)] for k in test_keys}

    async def give_back(self, test_keys: list[str]) -> None:
        """Release claims on tests we took and will not run (the shard stopped first)."""
        if not test_keys:
            return
        with trio.CancelScope(shield=True):  # also on the way out of a cancelled shard
            try:
                await trio.to_thread.run_sync(
                    self.log.release, [test_lease(k) for k in test_keys], self.holder)
            except UserError as exc:
                if self.failed is None:
                    raise
                self.failed(exc)  # they are freed with the process's other leases

    async def heartbeat(self, lost_route: trio.CancelScope) -> None:
        """Renew every lease we hold; if a route was lost (we stalled past the ttl and
        another collector took it), stop sending: cancel `lost_route`."""
        while True:
            await trio.sleep(self.ttl / HEARTBEATS_PER_TTL)
            try:
                held = await trio.to_thread.run_sync(self.log.renew, self.holder, self.ttl)
            except UserError as exc:
                if self.failed is None:
                    raise
                self.failed(exc)
                return
            lost = {name for name in self._routes if name not in held}
            if f"plan:{self.holder}" not in held:  # stalled past the ttl: marks may be gone
                lost.add("plan")
            if lost:
                self.lost |= lost
                lost_route.cancel()
                return

    def release_all(self) -> None:
        self.log.release_all(self.holder)


class _Ahead:
    """An iterator of test specs that can be looked ahead of and given back to: the
    `deque` operations `ClaimedTests` uses, over specs made one at a time."""

    def __init__(self, specs: Iterable[TestSpec]) -> None:
        self._specs = iter(specs)
        self._back: deque[TestSpec] = deque()

    def __bool__(self) -> bool:
        if not self._back:
            nxt = next(self._specs, None)
            if nxt is None:
                return False
            self._back.append(nxt)
        return True

    def popleft(self) -> TestSpec:
        return self._back.popleft() if self._back else next(self._specs)

    def take(self, n: int) -> list[TestSpec]:
        out = [self._back.popleft() for _ in range(min(n, len(self._back)))]
        out.extend(itertools.islice(self._specs, n - len(out)))
        return out

    def extendleft(self, specs: Iterable[TestSpec]) -> None:
        self._back.extendleft(specs)

    def append(self, spec: TestSpec) -> None:
        """After everything else (the queue of held tests, whose iterator is empty)."""
        self._back.append(spec)


class ClaimedTests:
    """A shard's tests, handed to its workers one claimed test at a time.

    Without leases it is the plain list. With them, tests are claimed in batches of up to
    `CLAIM_BATCH` (never more than the shard's workers), one transaction per batch and one
    batch in flight per shard; a test's claim still ends in the transaction that stores
    its event. A test held by another collector is put back and asked for again once the
    rest are done (with `wait`, until it is ours or completed); one completed elsewhere
    meanwhile is dropped; one still held at the end is counted as not taken, with the run
    that holds it. Claimed tests no worker took are released by `close`.
    """

    def __init__(self, tests: Iterable[TestSpec], leases: ProcessLeases | None,
                 progress: ShardProgress, batch: int = CLAIM_BATCH) -> None:
        self._todo = _Ahead(tests)  # made as they are asked for (a plan holds no spec)
        self._held = _Ahead(())  # held by another collector: asked for again at the end
        self._ready: deque[TestSpec] = deque()  # claimed, not yet handed out
        self._leases = leases
        self._progress = progress
        self._batch = max(1, batch)
        self._claiming = trio.Lock()

    async def next(self) -> TestSpec | None:
        leases = self._leases
        if leases is None:
            return self._todo.popleft() if self._todo else None
        while not self._ready:
            async with self._claiming:
                if self._ready:
                    break
                if not self._todo and not self._held:
                    return None
                await self._claim_batch(leases)
        return self._ready.popleft()

    async def _claim_batch(self, leases: ProcessLeases) -> None:
        if self._todo:
            source, again = self._todo, False
        else:
            source, again = self._held, True
            if leases.wait:
                await trio.sleep(WAIT_POLL)
        specs = source.take(self._batch)
        try:
            found = await leases.take_tests([s.test_key for s in specs])
        except BaseException:
            source.extendleft(reversed(specs))  # unclaimed: the next run takes them
            raise
        for spec in specs:
            why = found[spec.test_key]
            if why is None:
                self._ready.append(spec)
            elif why == DONE:
                self._progress.elsewhere += 1
            elif not again or leases.wait:
                self._held.append(spec)
            else:
                self._progress.not_taken += 1
                self._progress.held_by.add(why)

    async def close(self) -> None:
        """Give back the claims of tests no worker took (the shard stopped early)."""
        if self._leases is not None and self._ready:
            keys = [s.test_key for s in self._ready]
            self._ready.clear()
            await self._leases.give_back(keys)


__all__ = ["DONE", "ClaimedTests", "ProcessLeases", "holder_id", "route_lease",
           "test_lease"]
