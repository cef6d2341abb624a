"""Leases in the store, on both backends: claims, expiry, renewal, the end of a test claim
with the event that finishes it, and a test completed elsewhere is not claimed again."""

from __future__ import annotations

import time

from storage_helpers import completed, errored

from ultra.store import DONE, EventLog


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
