"""Many writer processes at once, and a writer killed mid-batch: real OS processes."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import storage_helpers
from storage_helpers import raw_sql

from ultra.projection.audit import audit
from ultra.projection.projecting import project
from ultra.eventlog.store import EventLog

HELPER = Path(storage_helpers.__file__)


def test_eight_processes_append_concurrently_without_loss_or_error(tmp_path, db):
    """On both backends; meanwhile incremental projections fold whatever is committed, and
    the last one equals a rebuild: no event with a lower seq commits after a reader passed."""
    go = tmp_path / "go"
    out, rebuilt = tmp_path / "inc.json", tmp_path / "rebuilt.json"
    EventLog.open(db).close()  # created once; the writers race only on appends
    procs = [
        subprocess.Popen([sys.executable, str(HELPER), str(db), str(w), "5000", str(w), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for w in range(8)
    ]
    go.touch()
    projections = 0
    while any(p.poll() is None for p in procs):
        project(db, out)
        projections += 1
        time.sleep(0.2)
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
        assert b"locked" not in err and not err.strip()
    last = project(db, out)
    assert not last.rebuilt and projections >= 2
    project(db, rebuilt, rebuild=True)
    assert out.read_bytes() == rebuilt.read_bytes()
    with EventLog.open(db, create=False) as log:
        rows = raw_sql(log, "SELECT seq, event_id, run_id FROM events ORDER BY seq")
    assert len(rows) == 40_000
    seqs = [r[0] for r in rows]
    assert all(a < b for a, b in zip(seqs, seqs[1:]))
    assert len({r[1] for r in rows}) == 40_000
    per_writer = collections.Counter(r[2] for r in rows)
    assert per_writer == {f"w{w}": 5000 for w in range(8)}
    # each writer's own events are stored in the order it appended them
    for w in range(8):
        mine = [int(r[1].split("-")[1]) for r in rows if r[2] == f"w{w}"]
        assert mine == sorted(mine)


def test_writer_killed_mid_batch_leaves_whole_batches_and_a_clean_audit(tmp_path):
    db, out = tmp_path / "events.db", tmp_path / "master_database.json"
    EventLog.open(db).close()
    batch = 2000
    proc = subprocess.Popen([sys.executable, str(HELPER), "crash", str(db), str(batch)],
                            stderr=subprocess.PIPE)
    try:
        with EventLog.open(db, create=False) as log:
            deadline = time.monotonic() + 120
            while log.count() < 3 * batch and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(0.037)  # land somewhere inside a later batch
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with EventLog.open(db, create=False) as log:
        assert log.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        sizes = collections.Counter(
            r[0] for r in log.connection.execute("SELECT run_id FROM events")
        )
        assert len(sizes) >= 3
        assert set(sizes.values()) == {batch}  # only whole committed batches
        n = log.count()
        assert n == log.last_seq() == batch * len(sizes)
        assert log.append([storage_helpers.completed(1, event_id="after")]) == 1  # still writable
    report = project(db, out)
    assert report.events_folded == n + 1
    result = audit(db, out)
    assert result.findings == []
