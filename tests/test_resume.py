"""Resume: what `ultra run` plans again is decided by the shell that plans, from the log."""

from __future__ import annotations

from storage_helpers import completed, errored, ts

from ultra import events as ev
from ultra.collect.resume import completed_test_keys
from ultra.eventlog.store import EventLog


def test_completed_test_keys_excludes_errored_and_retracted(tmp_path):
    with EventLog.open(tmp_path / "e.db") as log:
        log.append([completed(1), completed(2, run_id="bad-run"), errored(3), completed(4)])
        assert completed_test_keys(log) == {"key-1", "key-2", "key-4"}
        log.append([ev.TestsRetracted(recorded_at=ts(10), selector=ev.Selector(run_id="bad-run"), reason="x",
                                      withdraws=["c2"])])
        assert completed_test_keys(log) == {"key-1", "key-4"}
        # a retest after the retraction counts again
        log.append([completed(11, event_id="again", test_key="key-2", run_id="bad-run")])
        assert completed_test_keys(log) == {"key-1", "key-2", "key-4"}


def test_a_second_run_of_the_embedded_demo_plans_nothing(tmp_path):
    """The demo as a user runs it (no --config): a second run finds every test completed."""
    import json

    from tests.collection_helpers import ultra

    db, out = str(tmp_path / "events.db"), str(tmp_path / "master.json")
    first = ultra("run", "--db", db, "--out", out, "--json", timeout=600)
    assert first.returncode == 0, first.stderr
    done = json.loads(first.stdout)
    assert done["planned"] > 0 and done["completed"] == done["planned"] and done["errored"] == 0
    plan = json.loads(ultra("plan", "--db", db, "--json").stdout)
    assert (plan["planned"], plan["skipped_completed"]) == (0, done["planned"])
    second = ultra("run", "--db", db, "--out", out, "--json", timeout=600)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert (again["planned"], again["completed"], again["skipped_completed"]) == (0, 0, done["planned"])
