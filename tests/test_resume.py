"""Resume: what `ultra run` plans again is decided by the shell that plans, from the log."""

from __future__ import annotations

from storage_helpers import completed, errored, ts

from ultra import events as ev
from ultra.runner import completed_test_keys
from ultra.store import EventLog


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
