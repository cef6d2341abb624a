"""Many collectors, one log: real `ultra run` processes against one simulator and one log
(SQLite file or the session's PostgreSQL server). Leases split the routes, every planned
test completes exactly once, a dead collector's tests are taken again after its leases
expire, and shard processes never outlive their parent."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from multiprocessing import Pipe
from pathlib import Path

from tests.collection_helpers import events, model, popen_ultra, sim_models_config, ultra
from ultra.collect.shard_process import _Reporter
from ultra.collect.shard import ShardSnapshot
from ultra.sim.config import Latency, SimConfig
from ultra.sim.process import SimProcess
from ultra.sim.server import key_fingerprint

KEY_QPS = 8.0
MODELS = (model("sim-good", "gw", "per-key", workers=2, qps=6)
          + model("sim-medium", "gw", "per-key", workers=2, qps=6)
          + model("sim-strong", "az", "per-deployment", workers=2, qps=10))


def _collector(root: Path, name: str, sim_url: str, instances: int) -> tuple[Path, Path]:
    """A collector's own working directory and config (as on its own machine)."""
    home = root / name
    home.mkdir()
    config = home / "ultra.toml"
    config.write_text(sim_models_config(sim_url, instances=instances, key_qps=KEY_QPS, models=MODELS))
    return home, config


def _start(home: Path, config: Path, db, *extra: str):
    return popen_ultra("run", "--config", str(config), "--db", str(db), "--out",
                       str(home / "master.json"), "--processes", "2", "--json", *extra, cwd=home)


def _finish(proc, timeout: float = 240) -> tuple[int, dict | None, str]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err[-3000:]
    return proc.returncode, (json.loads(out) if out.strip() else None), err


def _completions(db) -> Counter:
    return Counter(e["test_key"] for e in events(db, "--type", "test.completed"))


def _planned(db) -> int:
    return max(e["plan"]["tests"] for e in events(db, "--type", "run.started"))


def _audit_clean(db, home: Path) -> None:
    out = str(home / "master.json")
    proj = ultra("project", "--db", str(db), "--out", out)
    assert proj.returncode == 0, proj.stderr
    proc = ultra("audit", "--db", str(db), "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _busiest_key_windows(sim) -> list[int]:
    stats = sim.stats()
    return [stats["keys"][key_fingerprint(f"sim-key-{i}")]["max_per_second"] for i in range(3)]


def _wait_for(db, at_least: int, procs, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = ultra("events", "--db", str(db), "--type", "test.completed")
        assert proc.returncode == 0 or "no event log there" in proc.stderr, proc.stderr
        if len(proc.stdout.splitlines()) >= at_least:
            return
        assert all(p.poll() is None for p in procs), "a collector ended early"
        time.sleep(0.3)
    raise AssertionError("no results in time")


def test_two_runs_on_one_log_complete_every_test_exactly_once(tmp_path, db):
    with SimProcess(SimConfig(latency=Latency(median_ms=30))) as sim:
        homes = [_collector(tmp_path, f"c{i}", sim.url, instances=2) for i in range(2)]
        # a password in the URL (this server trusts loopback) is never recorded
        url = db.replace("postgres@", "postgres:hunter2@") if isinstance(db, str) else db
        procs = [_start(home, config, url, "--wait") for home, config in homes]
        results = [_finish(p) for p in procs]
        windows = _busiest_key_windows(sim)
    for code, result, err in results:
        assert code == 0, err[-2000:]
        assert result["not_taken"] == 0
    done = _completions(db)
    assert set(done.values()) == {1} and len(done) == _planned(db)
    # each run did its share: neither ran the other's tests again
    assert sum(r["completed"] for _, r, _ in results) == len(done)
    assert not [e for e in events(db, "--type", "run.started") if "hunter2" in json.dumps(e)]
    # both runs drew on the same keys: the key budget held across collectors
    assert max(windows) <= KEY_QPS + 1, windows
    _audit_clean(db, homes[0][0])


def test_a_second_run_on_a_busy_log_reports_what_it_could_not_take(tmp_path, db):
    with SimProcess(SimConfig(latency=Latency(median_ms=150))) as sim:
        (home_a, config_a), (home_b, config_b) = (
            _collector(tmp_path, name, sim.url, instances=2) for name in ("a", "b"))
        first = _start(home_a, config_a, db)
        _wait_for(db, 2, [first])
        run_a = next(e["run_id"] for e in events(db, "--type", "run.started"))
        code, second, err = _finish(_start(home_b, config_b, db), timeout=120)
        assert code == 1  # not every planned test was taken: said so, not hidden
        assert second["not_taken"] > 0 and second["completed"] < second["planned"]
        assert f"held by run {run_a}" in err and "--wait" in err
        code_a, result_a, err_a = _finish(first)
    assert code_a == 0, err_a[-2000:]
    done = _completions(db)
    assert set(done.values()) == {1} and len(done) == result_a["planned"]
    _audit_clean(db, home_a)


def test_three_collectors_on_postgresql_one_killed_the_others_finish_its_tests(tmp_path, pg_url):
    with SimProcess(SimConfig(latency=Latency(median_ms=60))) as sim:
        homes = [_collector(tmp_path, f"m{i}", sim.url, instances=3) for i in range(3)]
        procs = [_start(home, config, pg_url, "--wait", "--lease-seconds", "8")
                 for home, config in homes]
        _wait_for(pg_url, 6, procs)
        os.killpg(procs[0].pid, signal.SIGKILL)  # the machine dies: parent and shard processes
        procs[0].wait()
        results = [_finish(p) for p in procs[1:]]
    for code, _, err in results:
        assert code == 0, err[-2000:]
    done = _completions(pg_url)
    assert set(done.values()) == {1} and len(done) == _planned(pg_url)
    _audit_clean(pg_url, homes[1][0])


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_shard_processes_exit_within_5s_of_their_parents_death(tmp_path):
    db = tmp_path / "events.db"
    with SimProcess(SimConfig(latency=Latency(median_ms=100))) as sim:
        home, config = _collector(tmp_path, "c", sim.url, instances=3)
        proc = _start(home, config, db)
        _wait_for(db, 2, [proc])
        shards = _children(proc.pid)
        assert shards
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5.0
        while any(_alive(p) for p in shards) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in shards if _alive(p)], "shard processes outlived their parent"
        # they committed what they had and let go of their leases: a new run takes the rest
        finished = events(db, "--type", "shard.finished")
        assert finished and all(e["interrupted"] for e in finished)
        code, result, err = _finish(_start(home, config, db))
        assert code == 0, err[-2000:]
        assert result["not_taken"] == 0 and result["skipped_completed"] > 0
    done = _completions(db)
    assert set(done.values()) == {1} and len(done) == _planned(db)


def test_progress_reports_never_block_on_a_full_pipe():
    reader, writer = Pipe(duplex=False)
    reporter = _Reporter(writer)
    snaps = [ShardSnapshot(shard=f"shard-{i}" * 20, planned=i) for i in range(200)]
    t = time.monotonic()
    for _ in range(2000):  # far more than a pipe holds, and nobody reads
        reporter(snaps)
    assert time.monotonic() - t < 30  # returned: it only replaces the latest snapshot
    reporter.close(timeout=0.5)
    assert not reporter.broken
    reader.close()  # the parent is gone: the blocked send ends with a broken pipe
    reporter.close(timeout=10)
    assert reporter.broken
    writer.close()


def test_killed_process_group_then_an_immediate_run_finishes_every_test_once(tmp_path):
    """A crash (OOM, reboot, closed lid) takes parent and shards at once. On the same host the
    dead run's leases are provably free: the next run, started at once and without --wait,
    takes every test left at once, not after the 30 s lease expires."""
    db = tmp_path / "events.db"
    with SimProcess(SimConfig(latency=Latency(median_ms=150))) as sim:
        home, config = _collector(tmp_path, "c", sim.url, instances=3)
        first = _start(home, config, db)
        _wait_for(db, 2, [first])
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        # no --wait: a lease still standing would leave its tests untaken and exit 1
        code, result, err = _finish(_start(home, config, db))
        assert code == 0, err[-2000:]
        assert result["not_taken"] == 0 and result["skipped_completed"] > 0
    done = _completions(db)
    assert set(done.values()) == {1} and len(done) == _planned(db)
    _audit_clean(db, home)


def _stop_outside_a_write(proc, db) -> None:
    """SIGSTOP `proc`'s process group. A SQLite writer stopped inside its write transaction
    (microseconds long) holds the file's lock until it continues: no store can take a lock
    from a living process, so the test stops it again until the lock is free. PostgreSQL
    ends a stopped collector's idle transaction itself (STALL_SECONDS)."""
    import sqlite3

    for _ in range(100):
        os.killpg(proc.pid, signal.SIGSTOP)
        if not isinstance(db, Path):
            return
        conn = sqlite3.connect(db, timeout=0.2, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            conn.close()
    raise AssertionError("the collector never left its write transaction")


def test_a_collector_stopped_past_its_lease_completes_no_test_twice(tmp_path, db):
    """SIGSTOP (a suspended VM, swap) past the lease: another collector takes and finishes
    the stopped one's tests; woken, the first still holds results in flight, and fencing
    drops them in the transaction that would have stored them."""
    with SimProcess(SimConfig(latency=Latency(median_ms=300))) as sim:
        (home_a, config_a), (home_b, config_b) = (
            _collector(tmp_path, name, sim.url, instances=3) for name in ("a", "b"))
        first = _start(home_a, config_a, db, "--lease-seconds", "3")
        _wait_for(db, 4, [first])
        _stop_outside_a_write(first, db)
        try:
            time.sleep(5)  # past the 3 s lease: its routes and claims expire
            code_b, result_b, err_b = _finish(
                _start(home_b, config_b, db, "--wait", "--lease-seconds", "3"))
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        _finish(first)  # it may say it lost tests; it must store none of them twice
    assert code_b == 0, err_b[-2000:]
    assert result_b["completed"] > 0
    done = _completions(db)
    assert set(done.values()) == {1} and len(done) == _planned(db)
    _audit_clean(db, home_b)
