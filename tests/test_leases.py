"""Leases in the store, on both backends: claims, expiry, renewal, the end of a test claim
with the event that finishes it, and a test completed elsewhere is not claimed again."""

from __future__ import annotations

import time

import trio
from storage_helpers import completed, errored

from ultra.collect.leases import ClaimedTests, ProcessLeases, holder_id
from ultra.collect.plan import Route, Shard
from ultra.collect.shard import ShardProgress
from ultra.eventlog.lease_table import DONE
from ultra.eventlog.store import EventLog
from ultra.suites import TestSpec


def test_a_lease_is_one_holders_until_released_or_expired(db):
    with EventLog.open(db) as log:
        assert log.claim("route:gw/key0", "A/h/1", "A", 30) is None
        assert log.claim("route:gw/key0", "A/h/1", "A", 30) is None  # ours: renewed
        assert log.claim("route:gw/key0", "B/h/2", "B", 30) == "A"  # names the run holding it
        log.release(["route:gw/key0"], "B/h/2")  # not B's to release
        assert log.claim("route:gw/key0", "B/h/2", "B", 30) == "A"
        log.release(["route:gw/key0"], "A/h/1")
        assert log.claim("route:gw/key0", "B/h/2", "B", 30) is None
        assert [(n, h, r) for n, h, r, _ in log.leases()] == [("route:gw/key0", "B/h/2", "B")]


def test_an_expired_lease_is_taken_and_renewal_keeps_one_alive(db):
    with EventLog.open(db) as log:
        assert log.claim("route:az/X", "A/h/1", "A", 0.3) is None
        assert log.claim("route:az/X-2", "A/h/1", "A", 0.3) is None
        deadline = time.monotonic() + 0.9
        while time.monotonic() < deadline:  # A's heartbeat keeps both
            assert log.renew("A/h/1", 0.3) == {"route:az/X", "route:az/X-2"}
            assert log.claim("route:az/X", "B/h/2", "B", 30) == "A"
            time.sleep(0.05)
        time.sleep(0.6)  # A died: no renewal for longer than the ttl
        assert log.claim("route:az/X", "B/h/2", "B", 30) is None
        assert log.renew("A/h/1", 0.3) == {"route:az/X-2"}  # A learns what it lost
        log.release_all("A/h/1")
        assert [n for n, *_ in log.leases()] == ["route:az/X"]


def test_a_test_claim_ends_with_the_event_that_finishes_it(db):
    with EventLog.open(db) as log:
        plan = log.last_seq()
        assert log.claim("plan:B/h/2", "B/h/2", "B", 30, plan_seq=plan) is None  # B is alive
        assert log.claim("test:key-1", "A/h/1", "A", 30, plan_seq=plan) is None
        assert log.claim("test:key-3", "A/h/1", "A", 30, plan_seq=plan) is None
        assert log.claim("test:key-1", "B/h/2", "B", 30, plan_seq=plan) == "A"
        first = completed(1)
        assert log.append([first, errored(3)], holder="A/h/1", release=["test:key-3"],
                          done={"test:key-1": first.event_id}) == 2
        assert [n for n, *_ in log.leases()] == ["plan:B/h/2"]
        # the errored test is free again; the completed one is done for a plan made before it
        assert log.claim("test:key-3", "B/h/2", "B", 30, plan_seq=plan) is None
        assert log.claim("test:key-1", "B/h/2", "B", 30, plan_seq=plan) == DONE
        # a plan that already knew that completion (since retracted, say) takes the test
        assert log.claim("test:key-1", "C/h/3", "C", 30, plan_seq=log.last_seq()) is None
        log.release_all("C/h/3")


def test_completion_marks_are_kept_while_an_older_plan_lives(db):
    with EventLog.open(db) as log:
        assert log.claim("plan:B/h/2", "B/h/2", "B", 30, plan_seq=0) is None
        log.claim("test:key-1", "A/h/1", "A", 30)
        first = completed(1)
        log.append([first], holder="A/h/1", done={"test:key-1": first.event_id})
        log.release_all("A/h/1")  # A ends; B, planned before the completion, still runs
        assert log.claim("test:key-1", "B/h/2", "B", 30, plan_seq=0) == DONE
        log.release_all("B/h/2")  # no plan predates the mark any more: it goes
        assert log.claim("test:key-1", "C/h/3", "C", 30, plan_seq=0) is None


def test_a_batch_of_claims_is_one_call_with_each_tests_answer(db):
    with EventLog.open(db) as log:
        plan = log.last_seq()
        assert log.claim("plan:B/h/2", "B/h/2", "B", 30, plan_seq=plan) is None
        assert log.claim("test:key-2", "B/h/2", "B", 30, plan_seq=plan) is None
        log.claim("test:key-1", "C/h/3", "C", 30, plan_seq=plan)
        first = completed(1)
        log.append([first], holder="C/h/3", done={"test:key-1": first.event_id})
        names = [f"test:key-{i}" for i in (3, 1, 2, 4, 3)]  # any order, a repeat
        assert log.claim_many(names, "A/h/1", "A", 30, plan_seq=plan) == {
            "test:key-1": DONE, "test:key-2": "B", "test:key-3": None, "test:key-4": None}
        # ours again (renewed), and B's release frees its test for the next batch
        log.release(["test:key-2"], "B/h/2")
        assert log.claim_many(names, "A/h/1", "A", 30, plan_seq=plan)["test:key-2"] is None
        assert {n for n, h, *_ in log.leases() if h == "A/h/1"} == {
            "test:key-2", "test:key-3", "test:key-4"}
        log.release_all("A/h/1")
        log.release_all("B/h/2")


def _specs(n: int) -> list[TestSpec]:
    return [TestSpec(test_key=f"key-{i}", suite="s", model="m", prompt_type="p",
                     tool_success_rate=1.0, difficulty="easy", task_type="t", index=i,
                     task_id=f"t{i}") for i in range(n)]


def _shard(tests: list[TestSpec]) -> Shard:
    route = Route(url="http://127.0.0.1:1/v1/chat/completions", shape="openai", api_model="m",
                  key_literal="k")
    return Shard(shard_id="m@m", model="m", instance="m", provider="openai", strategy="key",
                 key_index=None, deployment=None, workers=4, qps=10, request_timeout=5,
                 test_timeout=10, max_retries=0, max_turns=1, route=route, tests=tests)


def test_claimed_tests_come_in_batches_and_a_stopped_shard_gives_back_the_rest(db):
    """Tests are claimed a batch at a time; tests held or completed by another collector
    are skipped and counted; a shard that stops early releases the claims it did not run,
    so another collector takes them at once."""
    specs = _specs(10)
    with EventLog.open(db) as log:
        log.claim("test:key-1", "B/h/2", "B", 30)  # B runs key-1
        log.claim("test:key-2", "C/h/3", "C", 30)
        done = completed(2)
        log.append([done], holder="C/h/3", done={"test:key-2": done.event_id})
        log.release_all("C/h/3")  # C finished key-2 after our plan (seq 0)
        leases = ProcessLeases(log, "A", ttl=30, after_seq=0, wait=False)

        async def main() -> list[str]:
            progress = ShardProgress(_shard(specs))
            pending = ClaimedTests(specs, leases, progress, batch=4)
            taken = []
            for _ in range(5):
                spec = await pending.next()
                assert spec is not None
                taken.append(spec.test_key)
            ours = {n for n, h, *_ in log.leases() if h == leases.holder and n.startswith("test:")}
            # two batches of four (key-0..3, key-4..7), less B's and C's tests
            assert ours == {f"test:key-{i}" for i in (0, 3, 4, 5, 6, 7)}
            assert progress.elsewhere == 1
            await pending.close()  # the shard stops: key-7 was claimed, never handed out
            return taken

        taken = trio.run(main)
        assert taken == ["key-0", "key-3", "key-4", "key-5", "key-6"]
        ours = {n for n, h, *_ in log.leases() if h == leases.holder and n.startswith("test:")}
        assert ours == {f"test:key-{i}" for i in (0, 3, 4, 5, 6)}  # still running: kept
        assert log.claim("test:key-7", "D/h/4", "D", 30) is None  # given back
        leases.release_all()
        log.release_all("B/h/2")
        log.release_all("D/h/4")


def test_a_batch_ends_with_the_tests_still_held_counted_not_taken(db):
    specs = _specs(3)
    with EventLog.open(db) as log:
        log.claim("test:key-1", "B/h/2", "B", 30)
        leases = ProcessLeases(log, "A", ttl=30, after_seq=0, wait=False)

        async def main() -> tuple[list[str], ShardProgress]:
            progress = ShardProgress(_shard(specs))
            pending = ClaimedTests(specs, leases, progress, batch=32)
            got = []
            while (spec := await pending.next()) is not None:
                got.append(spec.test_key)
            return got, progress

        got, progress = trio.run(main)
        assert got == ["key-0", "key-2"]
        assert (progress.not_taken, progress.held_by) == (1, {"B"})
        assert holder_id("A") == leases.holder
        leases.release_all()
        log.release_all("B/h/2")
