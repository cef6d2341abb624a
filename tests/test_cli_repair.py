"""`ultra repair`: aliases and retractions are appended as events and replayed."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.collection_helpers import ultra
from tests.storage_helpers import completed
from ultra.cli import app
from ultra.collect.resume import completed_test_keys
from ultra.eventlog.store import EventLog

runner = CliRunner()


def _log(tmp_path):
    db, out = tmp_path / "events.db", tmp_path / "master.json"
    with EventLog.open(db) as log:
        log.append([completed(0, model="deepseek-v3-prod"), completed(1, model="gpt-4o-mini", run_id="bad"),
                    completed(2, model="gpt-4o-mini", run_id="good")])
    return db, out


def test_alias_folds_old_results_into_the_canonical_model(tmp_path):
    db, out = _log(tmp_path)
    res = runner.invoke(app, ["repair", "alias", "deepseek-v3-prod", "DeepSeek-V3-0324",
                              "--reason", "old name", "--db", str(db), "--out", str(out)])
    assert res.exit_code == 0, res.output
    models = json.loads(out.read_text())["models"]
    assert sorted(models) == ["DeepSeek-V3-0324", "gpt-4o-mini"]
    assert runner.invoke(app, ["audit", "--db", str(db), "--out", str(out)]).exit_code == 0


def test_retraction_removes_matching_completions_and_they_are_planned_again(tmp_path):
    db, out = _log(tmp_path)
    res = runner.invoke(app, ["repair", "retract", "--run", "bad", "--reason", "scorer bug",
                              "--db", str(db), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "retracting 1 completed tests" in res.output
    doc = json.loads(out.read_text())
    assert doc["models"]["gpt-4o-mini"]["overall_stats"]["total"] == 1
    with EventLog.open(db) as log:
        assert completed_test_keys(log) == {"key-0", "key-2"}


def test_repairs_need_a_selector_and_an_existing_log(tmp_path):
    db, out = _log(tmp_path)
    res = ultra("repair", "retract", "--reason", "x", "--db", str(db))
    assert res.returncode == 2 and "needs at least one selector" in res.stderr
    res = ultra("repair", "alias", "a", "b", "--db", str(tmp_path / "none.db"))
    assert res.returncode == 2 and "no event log there" in res.stderr
    assert not (tmp_path / "none.db").exists()
    with EventLog.open(db) as log:
        assert log.count() == 3  # nothing was appended by the refused repairs


def test_a_retraction_lists_what_it_matched_when_made_and_refuses_an_empty_match(tmp_path):
    db, out = _log(tmp_path)
    res = runner.invoke(app, ["repair", "retract", "--model", "gpt-4o-mini", "--reason", "redo",
                              "--db", str(db), "--out", str(out)])
    assert res.exit_code == 0 and "retracting 2 completed tests" in res.output, res.output
    with EventLog.open(db) as log:
        (_, event), = log.stream(types=["tests.retracted"])
        assert event.withdraws == ["c1", "c2"]
        log.append([completed(3, model="gpt-4o-mini", run_id="later")])  # after the retraction
        assert completed_test_keys(log) == {"key-0", "key-3"}
    for args in (["--model", "gpt-4o-mini"], ["--run", "no-such-run"]):  # all already retracted / none
        res = ultra("repair", "retract", *args, "--run", "bad", "--reason", "x", "--db", str(db),
                    "--out", str(out))
        assert res.returncode == 2 and "match no completed test" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    with EventLog.open(db) as log:
        assert log.count() == 5  # the refused retractions recorded nothing
