"""The storage commands: project, events, import, audit (typer's CliRunner and real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from storage_helpers import ROOT, completed, errored, event_lists, ts
from typer.testing import CliRunner

from ultra import events as ev
from ultra.cli import app
from ultra.eventlog.store import EventLog
from ultra.projection.completion_index import CompletionIndex

runner = CliRunner()


def cli(*args: str) -> "object":
    return runner.invoke(app, list(args), catch_exceptions=False)


def ultra_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "ultra", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_lists(max_size=30))
def test_export_and_import_into_an_empty_log_gives_the_same_projection(events):
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        with EventLog.open(t / "a.db") as log:
            log.append(events)
        exported = cli("events", "--db", str(t / "a.db"))
        assert exported.exit_code == 0
        (t / "dump.jsonl").write_text(exported.stdout)
        imported = cli("import", str(t / "dump.jsonl"), "--db", str(t / "b.db"))
        assert imported.exit_code == 0, imported.stdout
        assert f"imported {len(events)} new events" in imported.stdout
        again = cli("import", str(t / "dump.jsonl"), "--db", str(t / "b.db"))
        assert "imported 0 new events" in again.stdout
        for name in ("a", "b"):
            assert cli("project", "--db", str(t / f"{name}.db"), "--out", str(t / f"{name}.json")).exit_code == 0
        assert (t / "a.json").read_bytes() == (t / "b.json").read_bytes()


def _log(tmp_path: Path) -> Path:
    db = tmp_path / "events.db"
    with EventLog.open(db) as log:
        log.append([
            completed(1, model="DeepSeek-V3-0324-2", run_id="r1"),
            completed(2, model="qwen2.5-7b-instruct", run_id="r2"),
            errored(3, model="deepseek-v3-0324", run_id="r2"),
            completed(4, model="grok-3", run_id="r2"),
        ])
    return db


def test_events_filters_and_prints_seq(tmp_path):
    db = _log(tmp_path)

    def lines(*args: str) -> list[dict]:
        r = cli("events", "--db", str(db), *args)
        assert r.exit_code == 0
        return [json.loads(line) for line in r.stdout.splitlines()]

    assert [e["seq"] for e in lines()] == [1, 2, 3, 4]
    assert [e["seq"] for e in lines("--model", "DeepSeek-V3-0324")] == [1, 3]
    assert [e["seq"] for e in lines("--model", "deepseek-v3-0324-3")] == [1, 3]
    assert [e["seq"] for e in lines("--type", "test.errored")] == [3]
    assert [e["seq"] for e in lines("--type", "test.errored", "--type", "test.completed", "--run", "r2")] == [2, 3, 4]
    assert [e["seq"] for e in lines("--since", ts(3))] == [3, 4]
    assert [e["seq"] for e in lines("--since", "2025-07-01T00:00:00.000003+00:00")] == [3, 4]
    assert [e["seq"] for e in lines("--limit", "2")] == [1, 2]
    assert lines("--since", "2026-01-01") == []
    first = lines("--limit", "1")[0]
    assert ev.decode(json.dumps(first)) == completed(1, model="DeepSeek-V3-0324-2", run_id="r1")


def test_project_audit_and_restoring_a_deleted_or_edited_file(tmp_path):
    db, out = _log(tmp_path), tmp_path / "out" / "master_database.json"
    r = cli("project", "--db", str(db), "--out", str(out))
    assert r.exit_code == 0 and "rebuilt" in r.stdout and "up to seq 4" in r.stdout
    good = out.read_bytes()
    assert cli("project", "--db", str(db), "--out", str(out)).stdout.startswith("updated")
    assert out.read_bytes() == good
    clean = cli("audit", "--db", str(db), "--out", str(out))
    assert clean.exit_code == 0 and clean.stdout.rstrip().endswith("audit: clean")

    out.unlink()
    missing = runner.invoke(app, ["audit", "--db", str(db), "--out", str(out)])
    assert missing.exit_code == 1 and "missing" in missing.stdout
    assert cli("project", "--rebuild", "--db", str(db), "--out", str(out)).exit_code == 0
    assert out.read_bytes() == good

    doc = json.loads(good)
    doc["models"]["grok-3"]["overall_stats"]["full_success"] = 7  # a hand edit
    out.write_text(json.dumps(doc, indent=2, sort_keys=True))
    edited = runner.invoke(app, ["audit", "--db", str(db), "--out", str(out)])
    assert edited.exit_code == 1
    assert "differs from a fresh replay" in edited.stdout and "full_success" in edited.stdout
    assert cli("project", "--rebuild", "--db", str(db), "--out", str(out)).exit_code == 0
    assert out.read_bytes() == good
    assert cli("audit", "--db", str(db), "--out", str(out)).exit_code == 0


def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"this is not a database at all" * 10)
    (tmp_path / "bad.jsonl").write_text(ev.encode(completed(1)).decode() + "\n{broken\n")
    cases = [
        (["events", "--db", "junk.db"], "not an SQLite database"),
        (["audit", "--db", "nope.db"], "no event log there"),
        (["project", "--db", "junk.db"], "not an SQLite database"),
        (["import", "bad.jsonl", "--db", "new.db"], "bad.jsonl:2: not valid JSON"),
        (["import", "absent.jsonl", "--db", "new.db"], "absent.jsonl: cannot read"),
        (["events", "--db", "new.db", "--since", "yesterday"], "--since"),
        (["events", "--db", "new.db", "--type", "test.done"], "unknown event type"),
    ]
    for args, message in cases:
        r = ultra_process(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr
    with EventLog.open(tmp_path / "new.db", create=False) as log:
        assert log.count() == 0  # the bad import stored nothing


def test_import_keeps_unknown_types_and_events_prints_them_back(tmp_path):
    db = tmp_path / "e.db"
    src = tmp_path / "in.jsonl"
    future = {"event_id": "f1", "type": "judge.scored", "recorded_at": ts(9), "version": 2, "score": 1}
    # a known type from a newer writer, with a field this version does not have
    newer = {**json.loads(ev.encode(completed(1))), "version": 2, "judge": "x"}
    src.write_text(json.dumps(newer) + "\n" + json.dumps(future) + "\n")
    r = cli("import", str(src), "--db", str(db))
    assert "imported 2 new events of 2 read" in r.stdout and "1 of unknown types" in r.stdout
    printed = [json.loads(x) for x in cli("events", "--db", str(db)).stdout.splitlines()]
    assert printed == [{**newer, "seq": 1}, {**future, "seq": 2}]
    project = cli("project", "--db", str(db), "--out", str(tmp_path / "m.json"))
    assert "1 events skipped" in project.stdout
    audit = cli("audit", "--db", str(db), "--out", str(tmp_path / "m.json"))
    assert audit.exit_code == 0 and "does not know" in audit.stdout


def test_project_as_a_process_skips_typer_and_says_what_typer_says(tmp_path):
    """`ultra project` with plain options runs without typer (ultra.launch); the same
    command through the typer app prints the same line, and bad input is one line, exit 2."""
    db, out = tmp_path / "events.db", tmp_path / "out" / "master_database.json"
    with EventLog.open(db) as log:
        log.append([completed(i) for i in range(3)])
    quick = ultra_process("project", f"--db={db}", "--out", str(out), cwd=tmp_path)
    assert quick.returncode == 0, quick.stderr
    with EventLog.open(db) as log:
        log.append([completed(7)])
    quick2 = ultra_process("project", "--db", str(db), "--out", str(out), cwd=tmp_path)
    via_typer = cli("project", "--db", str(db), "--out", str(out))
    assert via_typer.exit_code == 0
    assert quick.stdout.startswith(f"rebuilt {out}: 3 events folded, up to seq 3; rebuilt ")
    assert quick2.stdout.startswith(f"updated {out}: 1 events folded, up to seq 4; updated ")
    assert via_typer.stdout.startswith(f"updated {out}: 0 events folded, up to seq 4; updated ")
    missing = ultra_process("project", "--db", str(tmp_path / "nope.db"), "--out", str(out), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "Traceback" not in missing.stderr
    helped = ultra_process("project", "--help", cwd=tmp_path)  # anything else: the typer app
    assert helped.returncode == 0 and "--rebuild" in helped.stdout


def test_project_as_a_process_imports_only_what_it_needs(tmp_path):
    """The incremental `ultra project` loads no CLI framework and nothing that only other
    commands use (`-X importtime` lists every module a process imports)."""
    db, out = tmp_path / "events.db", tmp_path / "master_database.json"
    with EventLog.open(db) as log:
        log.append([completed(1), completed(2)])
    assert ultra_process("project", "--db", str(db), "--out", str(out), cwd=tmp_path).returncode == 0
    with EventLog.open(db) as log:
        log.append([completed(3)])
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ultra", "project", "--db", str(db), "--out",
         str(out)], cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "1 events folded" in proc.stdout, proc.stderr
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"msgspec", "sqlite3", "ultra.projection.projecting"} <= imported  # the listing is real
    needless = {"typer", "click", "pydantic", "rich", "httpx", "trio", "sqlite_utils",
                "tempfile", "shutil", "random", "zipfile", "importlib.resources"}
    assert imported & needless == set()


def test_project_removes_the_temp_files_of_killed_writers_and_keeps_live_ones(tmp_path):
    db, out = tmp_path / "e.db", tmp_path / "master.json"
    with EventLog.open(db) as log:
        log.append([completed(1)])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is free now: the writer of this file was killed mid-write
    dead = [tmp_path / f".{name}.{gone.pid}-0123456789ab.tmp" for name in ("master.json", "results.db")]
    live = tmp_path / f".master.json.{os.getpid()}-0123456789ab.tmp"  # a writer at work
    other = tmp_path / ".other.json.1-0123456789ab.tmp"  # not a temp file of this command's outputs
    for f in (*dead, live, other):
        f.write_bytes(b"half written")
    r = cli("project", "--db", str(db), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert not [f for f in dead if f.exists()]
    assert live.exists() and other.exists() and out.exists()


def test_a_deleted_or_rewound_completion_index_state_is_rebuilt_not_a_traceback(tmp_path):
    import sqlite3

    db, out = tmp_path / "e.db", tmp_path / "master.json"
    with EventLog.open(db) as log:
        log.append([completed(1), completed(2), completed(3, event_id="again", test_key="key-1")])
    for change in ("DELETE FROM projection_state WHERE name = 'completion_keys'",
                   "UPDATE projection_state SET last_seq = 1 WHERE name = 'completion_keys'"):
        assert cli("project", "--db", str(db), "--out", str(out)).exit_code == 0
        conn = sqlite3.connect(db)
        with conn:
            conn.execute(change)
        conn.close()
        for command in ("project", "audit"):
            proc = ultra_process(command, "--db", str(db), "--out", str(out), cwd=tmp_path)
            assert "Traceback" not in proc.stderr, proc.stderr
            # the repeat of key-1 is found again from the log: audit names it, exit 1
            assert proc.returncode == (1 if command == "audit" else 0), proc.stdout + proc.stderr
        with EventLog.open(db) as log:
            assert CompletionIndex.of(log).repeated_test_keys() == {"key-1"}
