"""`ultra report` and its projections, as a user of an evaluation tool relies on them: a
projection knows its log; simulated results are marked in every format; names are safe in
every format; every rate carries its n and interval; every format says what it was made
from; conditions are never added together; comparisons pair tests; paper-ready output.

Logs are real SQLite files; the CLI runs as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import completion, ts

from ultra import events as ev
from ultra.store import EventLog

ROOT = Path(__file__).resolve().parent.parent


def ultra(*args: str, check: bool = True, cwd: Path | None = None,
          columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}
    p = subprocess.run([sys.executable, "-m", "ultra", *args], capture_output=True, text=True,
                       env=env, timeout=240, cwd=cwd or ROOT)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def completions(prefix: str, model: str, n: int, *, run: str = "run-1", start: int = 1,
             ok: int | None = None, simulated: bool = False, **extra: Any) -> list[ev.Event]:
    """`n` completions of `model`, the first `ok` of them successes."""
    ok = n // 2 if ok is None else ok
    out: list[ev.Event] = []
    for i in range(n):
        fields = dict(event_id=f"{prefix}{i}", recorded_at=ts(start + i), run_id=run,
                      shard_id=f"{model}@{run}", test_key=f"{prefix}key{i}", model=model,
                      instance=model, provider="p", task_id=f"t{i}", task_type="simple_task",
                      difficulty="easy", prompt_type="baseline", tool_success_rate=0.8,
                      simulated=simulated, final_score=0.5)
        fields.update(extra)
        if i < ok:
            out.append(completion(outcome="full_success", **fields))
        else:
            out.append(completion(outcome="failure", error_category="other", **fields))
    return out


def log_with(path: Path, events: list[ev.Event]) -> Path:
    with EventLog.open(path) as log:
        log.append(events)
    return path


def json_report(db: Path, out: Path, *args: str) -> tuple[dict, str]:
    p = ultra("report", *args, "--db", str(db), "--out", str(out), "--format", "json")
    return json.loads(p.stdout), p.stderr


# ---- 1. a projection knows its log --------------------------------------------------------


def test_two_logs_beside_one_out_directory_each_report_shows_only_its_own_tests(tmp_path):
    a = log_with(tmp_path / "a.db", completions("a", "model-a", 4))
    # b is the longer log: an incremental fold would have taken its events after seq 4
    b = log_with(tmp_path / "b.db", completions("b", "model-b", 9))
    out = tmp_path / "shared" / "master_database.json"
    doc, err = json_report(a, out, "overview")
    assert [r["model"] for r in doc["tables"][0]["rows"]] == ["model-a"]
    doc, err = json_report(b, out, "overview")
    [row] = doc["tables"][0]["rows"]
    assert (row["model"], row["tests"]) == ("model-b", 9)
    assert "another event log" in err and "rebuilding" in err and err.count("\n") >= 1
    doc, err = json_report(a, out, "overview")
    [row] = doc["tables"][0]["rows"]
    assert (row["model"], row["tests"]) == ("model-a", 4)
    assert "another event log" in err
    # master_database.json too: its fold state lives in each log, and names the chain head
    ultra("project", "--db", str(b), "--out", str(out))
    data = json.loads(out.read_text())
    assert list(data["models"]) == ["model-b"] and data["summary"]["total_tests"] == 9
    again = ultra("report", "--db", str(b), "--out", str(out), "--format", "json")
    assert "another event log" not in again.stderr  # the same log: nothing to say
