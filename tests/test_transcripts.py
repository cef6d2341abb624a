"""Transcripts: one per test, stored beside the log and bound by the chain; shown, audited,
carried by `ultra events --transcripts` and `ultra import`."""

from __future__ import annotations

import subprocess
import sys
import uuid
import zlib

from storage_helpers import completed
from tests.collection_helpers import ROOT, events, ultra
from ultra import events as ev
from ultra import transcripts as tr
from ultra.projection.audit import audit
from ultra.projection.projecting import project
from ultra.sim.config import Faults, Latency, SimConfig
from ultra.sim.process import SimProcess
from ultra.eventlog.store import EventLog


def _stored(db) -> dict[int, tuple[str, bytes]]:
    with EventLog.open(db, create=False) as log:
        return {seq: (d, b) for seq, d, b in log.transcript_rows()}


def _test_events(db) -> list[dict]:
    return [e for e in events(db) if e["type"] in ("test.completed", "test.errored")]


def test_the_demo_stores_one_transcript_per_test_and_show_prints_it(tmp_path, demo):
    db = demo.copy_to(tmp_path) / "events.db"  # the session's demo run (tests/conftest.py)
    tests = _test_events(db)
    stored = _stored(db)
    assert tests and len(stored) == len(tests)
    for e in tests:  # each event names the transcript stored at its seq, bytes intact
        digest, blob = stored[e["seq"]]
        assert e["transcript"] == digest == tr.digest(zlib.decompress(blob))
    def transcript(e: dict) -> tr.Transcript:
        return tr.decode(zlib.decompress(stored[e["seq"]][1]))

    # a completed test with native tool calls (the simulator's models also write text calls)
    done = next(e for e in tests if e["type"] == "test.completed"
                and any(turn.tool_calls for turn in transcript(e).turns))
    t = transcript(done)
    assert t.test_key == done["test_key"] and t.messages[0]["role"] == "system"
    assert [turn.finish_reason for turn in t.turns] == done["result"]["finish_reasons"]
    assert t.scoring["outcome"] == done["result"]["outcome"] and t.scoring["calls"]
    shown = ultra("show", done["test_key"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert done["test_key"] in out and done["result"]["outcome"] in out
    assert "call " in out and "tool → " in out and "HTTP 200" in out and "turn 1" in out
    assert '"status":"success"' in out or '"status":"error"' in out  # a tool result
    raw = ultra("show", done["event_id"], "--json", cwd=tmp_path)
    assert raw.returncode == 0 and tr.digest(raw.stdout.rstrip("\n").encode()) == done["transcript"]
    audited = ultra("audit", cwd=tmp_path)
    assert audited.returncode == 0 and f"{len(tests)} transcripts stored" in audited.stdout


def test_errored_tests_keep_their_attempts_and_no_key_is_ever_in_a_transcript(tmp_path):
    key = f"sk-transcript-{uuid.uuid4().hex}"
    sim = SimConfig(latency=Latency(median_ms=2), faults=Faults(server_error=0.35), seed=3)
    with SimProcess(sim) as server:
        config = tmp_path / "ultra.toml"
        config.write_text(f"""
[run]
prompt_types = ["baseline", "optimal"]
num_instances = 3

[providers.gw]
kind = "openai"
base_url = "{server.url}/v1"
api_key_envs = ["ULTRA_T_TRANSCRIPT_KEY"]

[models.sim-weak]
provider = "gw"
workers = 4
qps = 100
max_retries = 1
""")
        db = tmp_path / "events.db"
        proc = ultra("run", "--config", str(config), "--db", str(db), "--out",
                     str(tmp_path / "m.json"), "--max-errors", "100%", "--no-preflight",
                     "--progress", "none", env={"ULTRA_T_TRANSCRIPT_KEY": key})
    assert proc.returncode == 0, proc.stderr[-2000:]
    tests = _test_events(db)
    errored = [e for e in tests if e["type"] == "test.errored"]
    assert errored and len(errored) < len(tests)
    stored = _stored(db)
    assert len(stored) == len(tests)
    for _, blob in stored.values():
        data = zlib.decompress(blob).decode()
        assert key not in data and key[-12:] not in data and "authorization" not in data.lower()
    e = errored[0]
    t = tr.decode(zlib.decompress(stored[e["seq"]][1]))
    assert t.error["reason"] == "server_error" and t.unanswered is not None
    statuses = [a.status for a in t.unanswered.attempts]
    assert len(statuses) == 2 and statuses[-1] == e["http_status"]  # max_retries = 1
    assert all(s >= 500 for s in statuses)
    assert all(a.outcome == "server_error" for a in t.unanswered.attempts)
    assert t.unanswered.attempts[1].waited > 0  # the backoff before the retry
    shown = ultra("show", e["event_id"], "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    assert "errored: server_error" in shown.stdout
    assert f"HTTP {e['http_status']} server_error" in shown.stdout
    assert key not in shown.stdout
    ex = ultra("report", "errors", "--examples", "2", "--db", str(db), "--out", str(tmp_path / "m.json"))
    assert ex.returncode == 0, ex.stderr
    assert "errored: server_error" in ex.stdout and "ultra show KEY" in ex.stdout
    listed = {k for line in ex.stdout.splitlines() if "errored: server_error" in line
              for k in line.split()[3:]}
    assert listed and listed <= {x["test_key"] for x in errored}


def _transcript(i: int) -> tr.Transcript:
    return tr.Transcript(test_key=f"key-{i}", model="m", instance="m",
                         messages=[{"role": "user", "content": f"task {i}"}])


def _log_with_transcripts(db, n: int = 4) -> dict[str, str]:
    """n completions with transcripts; returns event id -> digest."""
    evs, carried = [], {}
    for i in range(1, n + 1):
        digest, blob = tr.pack(_transcript(i))
        evs.append(ev.TestCompleted(**{**_fields(i), "transcript": digest}))
        carried[evs[-1].event_id] = (digest, blob)
    with EventLog.open(db) as log:
        assert log.append(evs, transcripts=carried) == n
    return {e: d for e, (d, _) in carried.items()}


def _fields(i: int) -> dict:
    e = completed(i)
    return {f: getattr(e, f) for f in e.__struct_fields__}


def test_audit_names_a_changed_a_missing_and_an_unreferenced_transcript(db, tmp_path):
    digests = _log_with_transcripts(db)
    out = tmp_path / "m.json"
    project(db, out)
    assert audit(db, out).clean
    first, second = digests["c1"], digests["c2"]
    forged = zlib.compress(b'{"test_key":"key-1","model":"m","instance":"m"}')
    with EventLog.open(db, create=False) as log:
        conn = log.connection
        ph = "%s" if log.dialect == "postgresql" else "?"
        on = " ON transcripts" if log.dialect == "postgresql" else ""
        conn.execute(f"DROP TRIGGER transcripts_no_update{on}")
        conn.execute(f"DROP TRIGGER transcripts_no_delete{on}")
        conn.execute(f"UPDATE transcripts SET data = {ph} WHERE seq = 1", (forged,))
        conn.execute("DELETE FROM transcripts WHERE seq = 2")
        conn.execute(f"INSERT INTO transcripts (seq, digest, data) VALUES (77, {ph}, {ph})",
                     ("ab" * 32, zlib.compress(b"{}")))
        # a byte flipped in the stored zlib data of the third
        (blob,) = conn.execute("SELECT data FROM transcripts WHERE seq = 3").fetchone()
        flipped = bytearray(blob)
        flipped[len(flipped) // 2] ^= 0x01
        conn.execute(f"UPDATE transcripts SET data = {ph} WHERE seq = 3", (bytes(flipped),))
    r = audit(db, out)
    text = "\n".join(r.findings)
    assert f"transcript {first} of seq 1 (event c1, test key key-1) was changed" in text
    assert f"transcript {digests['c3']} of seq 3 (event c3, test key key-3) was changed" in text
    assert f"transcript {second} of seq 2 (event c2, test key key-2) is missing" in text
    assert f"transcript {'ab' * 32} at seq 77 is unreferenced" in text
    assert len(r.findings) == 4, r.findings
    cli = ultra("audit", "--db", str(db), "--out", str(out))
    assert cli.returncode == 1 and "is unreferenced" in cli.stdout and "is missing" in cli.stdout


def test_events_transcripts_into_import_give_the_same_transcripts(db, tmp_path):
    _log_with_transcripts(db)
    with EventLog.open(db) as log:  # and an event without one
        log.append([completed(9)])
    dump = ultra("events", "--db", str(db), "--transcripts")
    assert dump.returncode == 0, dump.stderr
    lines = dump.stdout.splitlines()
    assert sum(tr.is_line(x) for x in lines) == 4 and len(lines) == 9
    target = tmp_path / "merged.db"
    imp = subprocess.run([sys.executable, "-m", "ultra", "import", "-", "--db", str(target)],
                         input=dump.stdout, capture_output=True, text=True, cwd=ROOT)
    assert imp.returncode == 0, imp.stderr
    assert "imported 5 new events of 5 read" in imp.stdout and "with 4 transcripts" in imp.stdout

    def by_event(location) -> dict[str, bytes]:
        with EventLog.open(location, create=False) as log:
            ids = {seq: e.event_id for seq, e in log.stream()}
            return {ids[seq]: zlib.decompress(b) for seq, _, b in log.transcript_rows()}

    assert by_event(target) == by_event(db) and len(by_event(target)) == 4
    project(target, tmp_path / "m2.json")
    assert audit(target, tmp_path / "m2.json").clean
    again = subprocess.run([sys.executable, "-m", "ultra", "import", "-", "--db", str(target)],
                           input=dump.stdout, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and "imported 0 new events" in again.stdout
    assert len(_stored(target)) == 4


def test_import_refuses_a_transcript_whose_bytes_do_not_match_its_digest(tmp_path):
    db = tmp_path / "events.db"
    _log_with_transcripts(db, 2)
    dump = ultra("events", "--db", str(db), "--transcripts").stdout.splitlines()
    n = next(i for i, x in enumerate(dump) if tr.is_line(x))
    digest, _ = tr.parse_line(dump[n], "x")
    dump[n] = tr.line(digest, zlib.compress(b'{"test_key":"forged"}'))
    target = tmp_path / "t.db"
    imp = subprocess.run([sys.executable, "-m", "ultra", "import", "-", "--db", str(target)],
                         input="\n".join(dump) + "\n", capture_output=True, text=True, cwd=ROOT)
    assert imp.returncode == 2 and "Traceback" not in imp.stderr
    assert imp.stderr.count("\n") == 1 and f"stdin:{n + 1}: transcript" in imp.stderr
    assert "do not match its digest" in imp.stderr
    with EventLog.open(target, create=False) as log:
        assert log.count() == 0 and not list(log.transcript_rows())


def test_transcripts_modes_and_bad_input(tmp_path):
    bad = ultra("run", "--transcripts", "some", "--db", str(tmp_path / "e.db"), cwd=tmp_path)
    assert bad.returncode == 2 and "--transcripts 'some'" in bad.stderr
    assert bad.stderr.count("\n") == 1
    missing = ultra("show", "no-such-key", "--db", str(tmp_path / "e.db"))
    assert missing.returncode == 2 and "no event log there" in missing.stderr
    db = tmp_path / "x.db"
    with EventLog.open(db) as log:
        log.append([completed(1)])
    none = ultra("show", "key-1", "--db", str(db))
    assert none.returncode == 2 and "has no transcript" in none.stderr
    assert none.stderr.count("\n") == 1 and "Traceback" not in none.stderr
    unknown = ultra("show", "key-404", "--db", str(db))
    assert unknown.returncode == 2 and "no test event with event id or test key 'key-404'" in unknown.stderr
    assert tr.wanted("failures", True) and not tr.wanted("failures", False)
    assert tr.wanted("all", False) and not tr.wanted("none", True)


def test_failures_mode_stores_only_failed_tests(tmp_path):
    proc = ultra("run", "--json", "--progress", "none", "--transcripts", "failures",
                 "--models", "sim-good,sim-weak", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    db = tmp_path / "ultra-data" / "events.db"
    tests = _test_events(db)
    failed = [e for e in tests if e["type"] == "test.errored"
              or e["result"]["outcome"] != "full_success"]
    assert failed and len(failed) < len(tests)
    assert {e["seq"] for e in failed} == set(_stored(db))
    assert all(e.get("transcript") is None for e in tests if e not in failed)
