"""The shard's group commit (`ultra.collect.shard_process.write_events`): a backlog goes out in full
batches without waiting behind the workers once per event, and a real SQLite log gets
every event. Timing on trio's virtual clock."""

from __future__ import annotations

import math

import trio
import trio.testing

from tests.storage_helpers import completed
from ultra.collect.shard_process import BATCH_EVENTS, BATCH_SECONDS, _fill, write_events
from ultra.eventlog.store import EventLog


async def _busy(rounds: list[int]) -> None:
    while True:  # a runnable worker: one iteration per scheduler round
        rounds[0] += 1
        await trio.lowlevel.checkpoint()


def test_a_backlog_fills_a_batch_without_a_scheduler_round_per_event():
    async def main() -> tuple[int, int, bool]:
        send, recv = trio.open_memory_channel(math.inf)
        for i in range(BATCH_EVENTS * 2):
            send.send_nowait(i)
        rounds = [0]
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(_busy, rounds)
            await trio.sleep(0)  # the workers run
            batch = [await recv.receive()]
            taken = rounds[0]
            closed = await _fill(batch, recv)
            nursery.cancel_scope.cancel()
        return len(batch), rounds[0] - taken, closed

    size, rounds_while_filling, closed = trio.run(main)
    assert size == BATCH_EVENTS
    assert rounds_while_filling == 0  # the 499 waiting events were taken at once
    assert not closed


def test_a_quiet_channel_ends_the_batch_after_batch_seconds_and_a_closed_one_says_so():
    async def main() -> list[tuple[int, float, bool]]:
        out = []
        send, recv = trio.open_memory_channel(math.inf)
        send.send_nowait("first")
        async with trio.open_nursery() as nursery:
            async def late() -> None:
                await trio.sleep(BATCH_SECONDS / 2)
                send.send_nowait("within")
                await trio.sleep(BATCH_SECONDS)
                send.send_nowait("after")
            nursery.start_soon(late)
            t0 = trio.current_time()
            batch = [await recv.receive()]
            closed = await _fill(batch, recv)
            out.append((len(batch), trio.current_time() - t0, closed))
            batch = [await recv.receive()]
            await send.aclose()
            closed = await _fill(batch, recv)
            out.append((len(batch), 0.0, closed))
        return out

    (size, waited, closed), (size2, _, closed2) = trio.run(
        main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert (size, closed) == (2, False) and abs(waited - BATCH_SECONDS) < 1e-9
    assert (size2, closed2) == (1, True)


def test_every_event_of_a_backlog_is_stored_in_a_real_log(tmp_path):
    db = tmp_path / "events.db"
    evs = [completed(i) for i in range(BATCH_EVENTS * 2 + 7)]

    async def main() -> None:
        send, recv = trio.open_memory_channel(math.inf)
        for e in evs:
            send.send_nowait(e)
        send.close()
        with EventLog.open(db) as log:
            await write_events(recv, log)

    trio.run(main)
    with EventLog.open(db) as log:
        assert [e.event_id for _, e in log.stream()] == [e.event_id for e in evs]
