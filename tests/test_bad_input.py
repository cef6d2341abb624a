"""One line, not a traceback: every bad input of issue 9 ends with one clear line on stderr,
exit code 2 (1 for a run that failed), and the log left as it was.

Read-only and full file systems are real: a tmpfs mounted for the test (as root; other
users get a read-only file by permissions, and the full-disk tests are skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_helpers import completed

from tests.collection_helpers import ultra
from ultra import events as ev
from ultra.eventlog.store import EventLog

ROOT = os.geteuid() == 0


def one_error_line(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ultra: error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _mount(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small file system of our own (4 MB), unmounted afterwards."""
    if not ROOT:
        pytest.skip("mounting a small file system needs root (full disks are tested as root)")
    where = tmp_path / "fs"
    _mount(where, "size=4m")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _make_log(db: Path, n: int = 3) -> None:
    with EventLog.open(db) as log:
        log.append([completed(i) for i in range(n)])


def _count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        conn.close()


# ---- config and flags ------------------------------------------------------------------


@pytest.mark.parametrize("toml, message", [
    ('[models.m]\nprovider = "p"\nworkers = 99999999999999999999999\n[providers.p]\nkind = "sim"\n',
     "model 'm': Expected `int` <= 10000 - at `workers`"),
    ('[models.m]\nprovider = "p"\nqps = inf\n[providers.p]\nkind = "sim"\n',
     "model 'm': Expected `float` <= 1000000.0 - at `qps`"),
    ('[models.m]\nprovider = "p"\nqps = nan\n[providers.p]\nkind = "sim"\n', "at `qps`"),
    ('[models.m]\nprovider = "p"\n[providers.p]\nkind = "sim"\nkey_qps = inf\n',
     "provider 'p': Expected `float` <= 1000000.0 - at `key_qps`"),
    ('[models.m]\nprovider = "p"\nmax_retries = -1\n[providers.p]\nkind = "sim"\n', "at `max_retries`"),
    ('[models.m]\nprovider = "p"\ntest_timeout = 0\n[providers.p]\nkind = "sim"\n', "at `test_timeout`"),
    ('[models.m]\nprovider = "p"\nstrategy = "sideways"\n[providers.p]\nkind = "sim"\n', "at `strategy`"),
    ('[models.m]\nprovider = "p"\ndeployments = ["m", ".."]\n[providers.p]\nkind = "azure"\n'
     'endpoint = "https://x.example"\napi_key_env = "K"\n',
     "model 'm': deployment name '..' is not a path segment"),
    (f'[models.{"m" * 600}]\nprovider = "p"\n[providers.p]\nkind = "sim"\n',
     "model name 'mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm'... is 600 characters (at most 496)"),
    ('[models.m]\nprovider = "p"\n[providers.p]\nkind = "azure"\nendpoint = "https://x.example"\n'
     f'api_key_env = "K"\n[models.m.extra_body]\n[models.n]\nprovider = "p"\ndeployments = ["{"d" * 513}"]\n',
     "model 'n': deployment name 'dddddddddddddddddddddddddddddddddddddddd'... is 513 characters"),
    ('[run]\nmax_turns = 0\n', "Expected `int` >= 1 - at `$.run.max_turns`"),
    ('[run]\nnum_instances = 100000000\n', "at `$.run.num_instances`"),
    ('[run]\ntool_success_rates = [0.8, 7.5]\n', "at `$.run.tool_success_rates[1]`"),
])
def test_config_numbers_are_range_checked(tmp_path, toml, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    line = one_error_line(ultra("plan", "--config", str(cfg), "--db", str(tmp_path / "e.db")))
    assert message in line
    assert not (tmp_path / "e.db").exists()


@pytest.mark.parametrize("args, message", [
    (["--max-turns", "0"], "invalid --max-turns 0: expected `int` >= 1"),
    (["--max-turns", "-5"], "invalid --max-turns -5"),
    (["--max-turns", "1001"], "expected `int` <= 1000"),
    (["--num-instances", "100000000"], "invalid --num-instances 100000000: expected `int` <= 100000"),
    (["--num-instances", "100000", "--prompt-types", "all_with_flawed"],
     "one run plans at most 1,000,000"),
    (["--tool-success-rate", "inf"], "invalid tool success rate inf"),
    (["--tool-success-rate", "nan"], "invalid tool success rate nan"),
    (["--tool-success-rate", "1.0001"], "invalid tool success rate 1.0001"),
    (["--suite", "os:system"], "'os:system' is not a suite"),
    (["--suite", ":"], "cannot load suite ':': expected package.module:ATTR"),
    (["--suite", ".x:y"], "cannot load suite '.x:y'"),
])
def test_plan_flags_are_range_checked_before_anything_is_built(tmp_path, args, message):
    proc = ultra("plan", "--db", str(tmp_path / "e.db"), *args, timeout=60)
    assert message in one_error_line(proc)


def test_run_processes_are_range_checked(tmp_path):
    proc = ultra("run", "--db", str(tmp_path / "e.db"), "--processes", "0")
    assert "invalid --processes 0" in one_error_line(proc)
    assert not (tmp_path / "e.db").exists()


@pytest.mark.parametrize("option, value", [("--hang-seconds", "nan"), ("--hang-seconds", "-1"),
                                           ("--fault-hang", "2"), ("--port", "70000"),
                                           ("--key-rps", "inf"), ("--latency-ms", "nan")])
def test_sim_serve_options_are_range_checked(option, value):
    line = one_error_line(ultra("sim", "serve", option, value, timeout=60))
    assert f"invalid {option}:" in line


def test_a_non_ascii_key_is_refused_before_any_shard_process_starts(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[providers.p]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                   'api_key_envs = ["K0"]\n[models.m]\nprovider = "p"\n')
    proc = ultra("run", "--config", str(cfg), "--db", str(tmp_path / "e.db"),
                 "--out", str(tmp_path / "m.json"), env={"K0": "kéy"})
    assert "environment variable K0 holds characters an API key cannot have" in one_error_line(proc)
    assert not (tmp_path / "e.db").exists()


# ---- the event log ---------------------------------------------------------------------


def test_importing_a_list_type_is_one_line(tmp_path):
    db = tmp_path / "e.db"
    _make_log(db)
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"type":["a"],"event_id":"a","recorded_at":"x"}\n')
    line = one_error_line(ultra("import", str(bad), "--db", str(db)))
    assert f"{bad}:1: event without a string 'type'" in line
    assert _count(db) == 3


def test_a_conflicting_import_names_the_line_and_imports_nothing(tmp_path):
    db = tmp_path / "e.db"
    _make_log(db)
    changed = json.loads(ev.encode(completed(1)))
    changed["execution_time"] = 99.0
    f = tmp_path / "in.jsonl"
    f.write_text(ev.encode(completed(7)).decode() + "\n" + json.dumps(changed) + "\n")
    line = one_error_line(ultra("import", str(f), "--db", str(db)))
    assert f"{f}:2: event 'c1' differs from the stored event seq 2" in line
    assert _count(db) == 3


def _read_only(tmp_path: Path, db: Path) -> Path:
    """`db` on a read-only file system (root) or read-only by permissions (others)."""
    if ROOT:
        where = tmp_path / "ro"
        _mount(where, "size=8m")
        shutil.copy(db, where / db.name)
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where / db.name
    db.chmod(0o444)
    return db


@pytest.mark.parametrize("command", [
    ["import", "IN"], ["project", "--rebuild"], ["repair", "alias", "a", "b"],
    ["repair", "retract", "--run", "run-1", "--reason", "x"], ["run", "--models", "sim-weak"],
])
def test_a_read_only_log_is_one_line_and_left_as_it_was(tmp_path, command):
    db = tmp_path / "e.db"
    _make_log(db)
    with EventLog.open(db) as log:  # leave no -wal/-shm behind: a plain file to copy
        log.connection.execute("PRAGMA journal_mode = DELETE")
    before = db.read_bytes()
    ro = _read_only(tmp_path, db)
    try:
        inp = tmp_path / "in.jsonl"
        inp.write_text(ev.encode(completed(9)).decode() + "\n")
        args = [str(inp) if a == "IN" else a for a in command]
        proc = ultra(*args, "--db", str(ro), *(["--out", str(tmp_path / "m.json")]
                                              if command[0] != "import" else []))
        line = one_error_line(proc)
        assert str(ro) in line and ("read-only" in line or "directory read-only" in line), line
        assert ro.read_bytes() == before
    finally:
        if ROOT:
            subprocess.run(["umount", "-l", str(ro.parent)], check=False)


def test_a_read_only_directory_is_not_called_an_unusable_database(tmp_path):
    db = tmp_path / "e.db"
    _make_log(db)
    ro = _read_only(tmp_path, db)
    try:
        line = one_error_line(ultra("events", "--db", str(ro)))
        assert "not a usable SQLite database" not in line
        assert "read-only" in line
    finally:
        if ROOT:
            subprocess.run(["umount", "-l", str(ro.parent)], check=False)


def _fill(where: Path, leave: int) -> None:
    """Fill a file system until only about `leave` bytes are free."""
    free = shutil.disk_usage(where).free
    with (where / "filler").open("wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def test_a_full_disk_fails_an_import_in_one_line_and_keeps_the_log(tmp_path, tmpfs):
    db = tmpfs / "e.db"
    _make_log(db)
    big = tmp_path / "big.jsonl"
    big.write_text("".join(ev.encode(completed(i, test_key=f"k{i}", task_id="t" * 400)).decode()
                           + "\n" for i in range(10, 5010)))
    _fill(tmpfs, 64 * 1024)
    line = one_error_line(ultra("import", str(big), "--db", str(db)))
    assert "the disk is full" in line and str(db) in line
    (tmpfs / "filler").unlink()
    assert _count(db) == 3  # all or nothing
    assert ultra("audit", "--db", str(db), "--out", str(tmpfs / "m.json")).returncode in (0, 1)


def test_a_full_disk_fails_a_run_in_one_line_and_keeps_the_log(tmp_path, tmpfs):
    db, out = tmpfs / "e.db", tmpfs / "m.json"
    first = ultra("run", "--models", "sim-weak", "--db", str(db), "--out", str(out), "--processes", "1")
    assert first.returncode == 0, first.stderr
    done = _count(db)
    _fill(tmpfs, 16 * 1024)
    proc = ultra("run", "--models", "sim-weak", "--num-instances", "40", "--prompt-types", "all",
                 "--db", str(db), "--out", str(out), "--processes", "1")
    assert proc.returncode in (1, 2), proc.stderr  # 2 if refused before it started, 1 if it failed
    assert "Traceback" not in proc.stderr, proc.stderr
    assert any("the disk is full" in ln for ln in proc.stderr.splitlines()), proc.stderr
    (tmpfs / "filler").unlink()
    assert _count(db) >= done
    with EventLog.open(db) as log:  # still a log, every event readable
        stream = log.stream()
        assert sum(1 for _ in stream) == log.count() and stream.undecodable == 0


def test_a_disk_filling_mid_run_is_one_line_the_summary_and_exit_1(tmp_path, tmpfs):
    """The disk fills while shards write: one line (not a shard's traceback, not twice),
    the run's summary, exit 1; with space again the next run completes every test once."""
    from tests.collection_helpers import model, popen_ultra, sim_models_config
    from tests.test_store_outages import _completions, _wait_for_completions
    from ultra.sim.config import Latency, SimConfig
    from ultra.sim.process import SimProcess

    db = tmpfs / "e.db"
    cfg = tmp_path / "ultra.toml"
    args = ["run", "--config", str(cfg), "--db", str(db), "--out", str(tmp_path / "m.json"),
            "--processes", "1", "--progress", "none"]
    with SimProcess(SimConfig(latency=Latency(median_ms=300))) as sim:
        cfg.write_text(sim_models_config(sim.url, instances=4, models=model(
            "sim-good", "gw", "per-key", workers=2, qps=4)))
        proc = popen_ultra(*args, cwd=tmp_path)
        _wait_for_completions(str(db), 3, proc)
        _fill(tmpfs, 0)
        out, err = proc.communicate(timeout=300)
        line = one_error_line(subprocess.CompletedProcess(args, proc.returncode, out, err), code=1)
        assert "the disk is full" in line and str(db) in line, line
        assert "results not stored, the next run takes those tests again" in line, line
        assert out.startswith("run ") and " completed (success " in out, out
        (tmpfs / "filler").unlink()
        again = popen_ultra(*args, "--json", cwd=tmp_path)
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
    done = _completions(str(db))
    planned = json.loads(out)["planned"] + json.loads(out)["skipped_completed"]
    assert len(done) == planned and set(done.values()) == {1}


def _corrupt(db: Path) -> None:
    """Tear every page of the events table and its indexes (the schema and the small
    bookkeeping tables stay readable, as after a torn write in the middle of the file)."""
    with EventLog.open(db) as log:
        conn = log.connection
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        keep = {1} | {r[0] for r in conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE tbl_name != 'events' AND rootpage > 0")}
    data = bytearray(db.read_bytes())
    page = 4096
    for p in range(len(data) // page):
        if p + 1 not in keep:
            data[p * page + 10: p * page + 60] = b"\xff" * 50
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("command", [
    ["events"], ["audit"], ["project"], ["project", "--rebuild"], ["import", "IN"], ["plan"],
    ["run", "--models", "sim-weak"], ["repair", "alias", "a", "b"],
    ["repair", "retract", "--run", "run-1", "--reason", "x"], ["report"],
])
def test_a_corrupted_log_is_one_line_with_salvage_advice_from_every_command(tmp_path, command):
    db = tmp_path / "e.db"
    with EventLog.open(db) as log:
        log.append([completed(i, test_key=f"k{i}", task_id="t" * 300) for i in range(400)])
    _corrupt(db)
    before = db.read_bytes()
    inp = tmp_path / "in.jsonl"
    inp.write_text(ev.encode(completed(9999)).decode() + "\n")
    args = [str(inp) if a == "IN" else a for a in command]
    outs = [] if command[0] in ("import", "events", "plan") else ["--out", str(tmp_path / "m.json")]
    if command[0] == "report":
        outs = []
    line = one_error_line(ultra(*args, "--db", str(db), *outs))
    assert "corrupted" in line and "salvage" in line and "ultra import" in line, line
    assert db.read_bytes() == before
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0


# ---- output paths and URLs -------------------------------------------------------------


def test_out_writes_through_a_symlink_and_says_so(tmp_path):
    db = tmp_path / "e.db"
    _make_log(db)
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    proc = ultra("project", "--db", str(db), "--out", str(link))
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and json.loads(target.read_text())["summary"]["total_tests"] == 3
    assert f"{link} is a symlink; writing its target" in proc.stderr


def test_out_writes_into_a_device_and_says_so(tmp_path):
    db = tmp_path / "e.db"
    _make_log(db)
    proc = ultra("project", "--db", str(db), "--out", "/dev/null")
    assert proc.returncode == 0, proc.stderr
    assert Path("/dev/null").is_char_device()
    assert "/dev/null is a character device; writing into it, not replacing it" in proc.stderr


def test_a_bad_before_is_named_as_itself(tmp_path):
    proc = ultra("repair", "retract", "--db", str(tmp_path / "e.db"), "--out", str(tmp_path / "m.json"),
                 "--reason", "x", "--before", "2026-02-30T25:61:61", timeout=60)
    assert one_error_line(proc).startswith("ultra: error: --before '2026-02-30T25:61:61'")


def test_an_endless_import_line_is_refused_with_its_line_number(tmp_path):
    proc = ultra("import", "/dev/zero", "--db", str(tmp_path / "e.db"), timeout=120)
    assert one_error_line(proc) == ("ultra: error: /dev/zero:1: line longer than 16 MB: refused,"
                                    " nothing imported")


def test_an_import_file_with_a_utf8_byte_order_mark_is_read(tmp_path):
    with EventLog.open(tmp_path / "a.db") as log:
        log.append([completed(1), completed(2)])
    lines = ultra("events", "--db", str(tmp_path / "a.db")).stdout
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + lines.encode())
    proc = ultra("import", str(tmp_path / "bom.jsonl"), "--db", str(tmp_path / "b.db"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("imported 2 new events of 2 read")


def test_an_alias_longer_than_events_allow_is_refused_before_it_is_stored(tmp_path):
    db = tmp_path / "e.db"
    with EventLog.open(db) as log:
        log.append([completed(1)])
    proc = ultra("repair", "alias", "a" * 600, "sim-good", "--db", str(db), "--out", str(tmp_path / "m.json"))
    assert one_error_line(proc) == ("ultra: error: cannot record alias.defined:"
                                    " Expected `str` of length <= 512 - at `$.alias`")
    audit = ultra("audit", "--db", str(db), "--out", str(tmp_path / "m.json"))
    assert "undecodable" not in audit.stdout + audit.stderr
    assert len(ultra("events", "--db", str(db)).stdout.splitlines()) == 1  # nothing stored


def test_run_refuses_an_out_it_could_not_write_before_any_test_runs(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "data", "is a directory; give a file path"),
                         (tmp_path / "file" / "m.json", "is not a directory")):
        proc = ultra("run", "--db", str(tmp_path / "e.db"), "--out", str(out), timeout=60)
        assert message in one_error_line(proc)
    assert not (tmp_path / "e.db").exists()  # refused before the log was even opened


@pytest.mark.parametrize("line, message", [
    ("[" * 100_000 + "]" * 100_000, "in.jsonl:1: "),
    ('{"type":"test.completed","event_id":"x","version":2,"recorded_at":"2026-02-30T25:61:61Z"}',
     "in.jsonl:1: recorded_at '2026-02-30T25:61:61Z' is not a real UTC time"),
    ('{"type":"x.future","event_id":"x","version":2,"recorded_at":"2026-13-01T00:00:00Z"}',
     "in.jsonl:1: recorded_at '2026-13-01T00:00:00Z' is not a real UTC time"),
    ('{"type":"test.errored","event_id":"e1","version":2,"recorded_at":"2025-07-01T00:00:00Z",'
     '"run_id":"r","shard_id":"s","test_key":"k","model":"m","instance":"m","provider":"p",'
     '"task_id":"t","task_type":"simple_task","difficulty":"easy","prompt_type":"baseline",'
     '"tool_success_rate":0.8,"reason":"timeout","started_at":"2026-04-31T10:00:00Z"}',
     "in.jsonl:1: started_at '2026-04-31T10:00:00Z' is not a real UTC time"),
    ('{"type":"tests.retracted","event_id":"r1","version":2,"recorded_at":"2025-07-01T00:00:00Z",'
     '"selector":{"recorded_before":"2025-06-31T00:00:00Z"},"reason":"x","withdraws":["c1"]}',
     "in.jsonl:1: selector.recorded_before '2025-06-31T00:00:00Z' is not a real UTC time"),
])
def test_impossible_import_lines_are_one_line_and_import_nothing(tmp_path, line, message):
    (tmp_path / "in.jsonl").write_text(line + "\n")
    proc = ultra("import", "in.jsonl", "--db", str(tmp_path / "e.db"), cwd=tmp_path)
    assert one_error_line(proc).startswith(f"ultra: error: {message}")
