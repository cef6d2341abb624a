"""The event log failing mid-run, with real processes and real servers on loopback: a
PostgreSQL server stopped for 10 s while `ultra run` writes to it (the store reconnects
with backoff and the run goes on; or, past `--store-timeout`, the run stops with one line,
the summary and exit 1), and a retried batch that stores nothing twice. A full SQLite
disk mid-run is in tests/test_bad_input.py."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from pg_server import PgServer, pg_bin
from storage_helpers import completed

from tests.collection_helpers import model, popen_ultra, sim_models_config, ultra
from ultra.sim.config import Latency, SimConfig
from ultra.sim.process import SimProcess
from ultra.eventlog.store import EventLog

OUTAGE_SECONDS = 10.0


@pytest.fixture
def own_pg():
    """A server of this test's own: stopping it leaves the session's server alone."""
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


def _config(home: Path, sim_url: str) -> Path:
    home.mkdir(exist_ok=True)
    cfg = home / "ultra.toml"
    cfg.write_text(sim_models_config(sim_url, instances=4,
                                     models=model("sim-good", "gw", "per-key", workers=2, qps=4)))
    return cfg


def _run(home: Path, cfg: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    return popen_ultra("run", "--config", str(cfg), "--db", url, "--out", str(home / "m.json"),
                       "--processes", "1", "--json", *extra, cwd=home)


def _completions(url: str) -> Counter:
    proc = ultra("events", "--db", url, "--type", "test.completed")
    assert proc.returncode == 0, proc.stderr
    return Counter(json.loads(line)["test_key"] for line in proc.stdout.splitlines())


def _wait_for_completions(url: str, at_least: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listed = ultra("events", "--db", url, "--type", "test.completed")
        if len(listed.stdout.splitlines()) >= at_least:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.3)
    raise AssertionError("no results in time")


def _outage(pg: PgServer, proc: subprocess.Popen[str], url: str) -> tuple[int, dict, str]:
    _wait_for_completions(url, 3, proc)
    pg.pause()
    time.sleep(OUTAGE_SECONDS)
    pg.resume()
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err[-3000:]
    return proc.returncode, json.loads(out), err


def _resume_completes_every_test_once(home: Path, cfg: Path, url: str, planned: int) -> None:
    again = _run(home, cfg, url)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    done = _completions(url)
    assert len(done) == planned and set(done.values()) == {1}


def test_postgresql_stopped_for_10s_mid_run_the_run_goes_on(tmp_path, own_pg):
    url = own_pg.create_database("outage")
    with SimProcess(SimConfig(latency=Latency(median_ms=300))) as sim:
        cfg = _config(tmp_path / "c", sim.url)
        code, result, err = _outage(own_pg, _run(tmp_path / "c", cfg, url), url)
        errors = [ln for ln in err.splitlines() if ln.startswith("ultra: error: ")]
        assert code in (0, 1), err
        if code == 1:  # a loaded machine may stall a shard past its lease: said in one line
            assert len(errors) <= 1, err
        else:
            assert not errors and result["completed"] == result["planned"], err
        _resume_completes_every_test_once(tmp_path / "c", cfg, url, result["planned"])


def test_postgresql_lost_past_store_timeout_stops_the_run_in_one_line(tmp_path, own_pg):
    url = own_pg.create_database("lost")
    with SimProcess(SimConfig(latency=Latency(median_ms=300))) as sim:
        cfg = _config(tmp_path / "c", sim.url)
        code, result, err = _outage(own_pg, _run(tmp_path / "c", cfg, url, "--store-timeout", "2"),
                                    url)
        assert code == 1, err
        errors = [ln for ln in err.splitlines() if ln.startswith("ultra: error: ")]
        assert len(errors) == 1, err
        line = errors[0]
        assert f"lost the event log postgresql://postgres@127.0.0.1:{own_pg.port}/lost" in line
        assert "results not stored, the next run takes those tests again" in line
        assert f"; {result['unstored']} results not stored" in line
        assert result["completed"] < result["planned"] and not result["interrupted"]
        # every result the run counts as completed is stored, once
        done = _completions(url)
        assert sum(done.values()) == result["completed"] and set(done.values()) <= {1}
        _resume_completes_every_test_once(tmp_path / "c", cfg, url, result["planned"])


def test_the_summary_follows_the_one_line(tmp_path, own_pg):
    """Without --json: the error line on stderr, the run's summary on stdout."""
    url = own_pg.create_database("summary")
    with SimProcess(SimConfig(latency=Latency(median_ms=300))) as sim:
        cfg = _config(tmp_path / "c", sim.url)
        proc = popen_ultra("run", "--config", str(cfg), "--db", url, "--out",
                           str(tmp_path / "c" / "m.json"), "--processes", "1",
                           "--store-timeout", "2", "--progress", "none", cwd=tmp_path / "c")
        _wait_for_completions(url, 2, proc)
        own_pg.pause()
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            own_pg.resume()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith("ultra: error: ")]) == 1, err
    assert out.startswith("run ") and " completed (success " in out, out


def test_a_batch_tried_again_after_its_commit_stores_nothing_twice(db):
    """A commit whose answer was lost with the connection is tried again: its events are
    stored once, its claims stay completion marks, and nothing is called fenced."""
    with EventLog.open(db) as log:
        assert log.claim("test:key-1", "me", "run-1", 30) is None
        batch = [completed(1)]
        first = log.append_held(batch, holder="me", done={"test:key-1": "c1"})
        again = log.append_held(batch, holder="me", done={"test:key-1": "c1"})
        assert (first.stored, first.fenced) == (1, ())
        assert (again.stored, again.fenced) == (0, ())
        assert log.count() == 1
        assert log.claim("test:key-1", "other", "run-2", 30) == "done"  # the mark stayed


def test_a_collector_stopped_inside_a_transaction_does_not_hold_the_log(pg_url):
    """A collector stopped (SIGSTOP, a suspended VM) while it holds the append lock would
    hold every other collector with it: the server ends its idle transaction after
    STALL_SECONDS, the others append, and the stalled one reconnects and appends again."""
    import threading

    from ultra.eventlog.store_postgres import STALL_SECONDS

    with EventLog.open(pg_url) as stalled, EventLog.open(pg_url) as other:
        holding, outcome = threading.Event(), {}

        def stall() -> None:
            try:
                with stalled._transaction() as tx:
                    stalled._lock_appends(tx)
                    holding.set()
                    time.sleep(STALL_SECONDS + 3)  # stopped: nothing sent to the server
                    tx.execute("SELECT 1")
                outcome["stalled"] = "committed"
            except stalled.lost_errors as exc:
                outcome["stalled"] = type(exc).__name__

        thread = threading.Thread(target=stall)
        thread.start()
        assert holding.wait(30)
        appended = threading.Thread(target=lambda: outcome.update(other=other.append([completed(1)])))
        appended.start()
        appended.join(STALL_SECONDS + 60)
        assert outcome.get("other") == 1, "the stalled transaction held the log"
        thread.join(60)
        assert outcome["stalled"] != "committed"
        assert stalled.append([completed(2)]) == 1  # reconnected
        assert other.count() == 2
