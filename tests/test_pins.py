"""The pins: a fixed log (two runs, duplicates, an alias, a retraction, errored and
preflight events, truncated answers) projects to the digests committed beside it, byte for
byte. A redesign keeps them; a change that means to alter an output rewrites them with
`python tools/pin_digests.py --write`, and its commit says why."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import pin_digests  # noqa: E402


def test_the_pinned_log_projects_to_its_digests():
    want = json.loads((pin_digests.PINNED / "digests.json").read_text())
    got = pin_digests.digests()
    assert got["master_database.json"] == want["master_database.json"]
    assert got["results.db"] == want["results.db"]


def test_the_pinned_log_holds_what_it_must_pin():
    lines = [json.loads(line) for line in (pin_digests.PINNED / "events.jsonl").read_text().splitlines()]
    types = {e["type"] for e in lines}
    assert {"run.started", "test.completed", "test.errored", "alias.defined", "tests.retracted",
            "route.checked"} <= types
    keys = [e["test_key"] for e in lines if e["type"] == "test.completed"]
    assert len(keys) > len(set(keys))  # duplicates
    assert len({e["run_id"] for e in lines if e["type"] == "run.started"}) == 2
