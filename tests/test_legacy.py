"""`ultra import-legacy`: the legacy system's master_database.json files as events.

The four sample files under tests/data/legacy are unchanged copies of that system's own
files (see its README): each is imported and ultra's projection is held to the leaves.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from collection_helpers import events, ultra
from projections import master_database as mdb
from ultra import legacy

DATA = Path(__file__).parent / "data" / "legacy"
V2 = DATA / "master_database.v2.json"
SUCCESSFUL = DATA / "master_database.v3-successful.json"
PARTIAL = DATA / "master_database.v3-partial_success.json"
EMPTY = DATA / "master_database.v3-empty.json"
NESTED = (SUCCESSFUL, PARTIAL)
LEVELS = ("by_prompt_type", "by_tool_success_rate", "by_difficulty", "by_task_type")


def _leaves(node, depth=0, keys=()):
    if depth == len(LEVELS):
        yield keys, node
        return
    for k, child in node.get(LEVELS[depth], {}).items():
        yield from _leaves(child, depth + 1, (*keys, k))


def _file_leaves(path: Path):
    doc = json.loads(path.read_text())
    for model, node in doc["models"].items():
        for keys, leaf in _leaves(node):
            yield model, keys, leaf


def _import(tmp: Path, path: Path, *args: str):
    return ultra("import-legacy", str(path), "--db", str(tmp / "e.db"), "--out",
                 str(tmp / "m.json"), *args)


def _doc(tmp: Path) -> dict:
    return json.loads((tmp / "m.json").read_text())


def _count_events(tmp: Path) -> int:
    if not (tmp / "e.db").exists():
        return 0
    with sqlite3.connect(tmp / "e.db") as c:
        return c.execute("SELECT COUNT(*) FROM events").fetchone()[0]


# ---- reading leaves --------------------------------------------------------------------


def test_a_leaf_written_as_success_full_plus_partial_gives_its_full_and_partial():
    leaf = {"total": 24, "success": 10, "full_success": 9, "partial_success": 1,
            "success_rate": 10 / 24, "full_success_rate": 9 / 24, "partial_success_rate": 1 / 24,
            "failure_rate": 14 / 24}
    assert legacy.read_leaf(leaf) == ((9, 1, 14), "full+partial", "")
    # only `success` and the rates: the rates say which counting, and the partial count
    only = {"total": 24, "success": 10, "success_rate": 10 / 24,
            "full_success_rate": 9 / 24, "partial_success_rate": 1 / 24}
    assert legacy.read_leaf(only) == ((9, 1, 14), "full+partial", "")
    # `success` counting full successes alone, partial apart (successful/partial/failed)
    apart = {"total": 10, "successful": 3, "partial": 2, "failed": 5}
    assert legacy.read_leaf(apart) == ((3, 2, 5), "full", "")


def test_rates_that_disagree_with_consistent_counts_are_an_anomaly_imported_as_counted():
    # rates divided by the successes, not the total (a real leaf of v3-partial_success)
    leaf = {"total": 34, "success": 20, "full_success": 13, "partial_success": 7,
            "success_rate": 1.0, "full_success_rate": 0.65, "partial_success_rate": 0.35}
    assert legacy.read_leaf(leaf) == ((13, 7, 14), "full+partial", legacy.RATES_DISAGREE)
    # no full_success: the rates' relation decides (success_rate = full + partial rate)
    leaf = {"total": 28, "success": 7, "partial_success": 7, "success_rate": 0.35,
            "full_success_rate": 0.0, "partial_success_rate": 0.35}
    assert legacy.read_leaf(leaf) == ((0, 7, 21), "full+partial", legacy.RATES_DISAGREE)


def test_a_leaf_that_fits_neither_counting_is_skipped():
    assert legacy.read_leaf({"total": 5, "success": 4, "partial": 3, "failed": 3})[0] is None
    assert legacy.read_leaf({"total": "x"})[2] == legacy.MALFORMED


def test_v3_partial_success_anomalies_as_found():
    r = legacy.read(PARTIAL.read_bytes())
    assert len(r.cells) == 228
    assert {k: len(v) for k, v in r.anomalies.items()} == {legacy.RATES_DISAGREE: 25}
    assert any(d.startswith("summary/total_tests says 4993") for d in r.disagreements)
    # 35 prompt-level summaries beside by_tool_success_rate: read only as aggregates
    assert sum(1 for d in r.disagreements if "/summary/total" in d) == 2


# ---- each file: ultra's totals equal the leaves' ---------------------------------------


@pytest.mark.parametrize("path", NESTED, ids=lambda p: p.stem)
def test_per_model_and_per_cell_totals_equal_the_leaves(tmp_path, path):
    proc = _import(tmp_path, path)
    assert proc.returncode == 0, proc.stderr
    doc = _doc(tmp_path)
    assert mdb.check_invariants(doc) == []
    per_model: Counter[str] = Counter()
    cells = 0
    for model, (prompt, rate, diff, task), leaf in _file_leaves(path):
        got = doc["models"][model]["by_prompt_type"][prompt]["by_tool_success_rate"][rate][
            "by_difficulty"][diff]["by_task_type"][task]
        full, partial, failure = legacy.read_leaf(leaf)[0]
        assert (got["total"], got["full_success"], got["partial_success"], got["failure"]) == (
            leaf["total"], full, partial, failure)
        assert got["legacy_tests"] == leaf["total"]
        per_model[model] += leaf["total"]
        cells += 1
    assert {m: n["overall_stats"]["total"] for m, n in doc["models"].items()} == dict(per_model)
    assert doc["summary"]["total_tests"] == doc["summary"]["legacy_tests"] == sum(per_model.values())
    assert len(doc["test_groups"]) == cells
    assert f"cells imported      {cells}" in proc.stdout
    assert ultra("audit", "--db", str(tmp_path / "e.db"), "--out",
                 str(tmp_path / "m.json")).returncode == 0


def _check_levels(node, depth=0):
    """overall_stats at every level equal the sums of the leaves below it."""
    if depth == len(LEVELS):
        return Counter({k: node[k] for k in ("total", "full_success", "partial_success",
                                             "failure", "legacy_tests", "total_errors")})
    total: Counter[str] = Counter()
    for child in node[LEVELS[depth]].values():
        total += _check_levels(child, depth + 1)
    own = node["overall_stats"]
    assert {k: own[k] for k in total} == dict(total)
    return total


@pytest.mark.parametrize("path", (*NESTED, V2), ids=lambda p: p.stem)
def test_overall_stats_at_every_level_are_the_sums_of_the_leaves(tmp_path, path):
    assert _import(tmp_path, path).returncode == 0
    doc = _doc(tmp_path)
    grand: Counter[str] = Counter()
    for node in doc["models"].values():
        grand += _check_levels(node)
    assert doc["summary"]["total_tests"] == grand["total"]
    assert doc["summary"]["full_success"] == grand["full_success"]
    assert doc["summary"]["partial_success"] == grand["partial_success"]


def test_v2_gives_per_model_totals_and_its_note(tmp_path):
    proc = _import(tmp_path, V2)
    assert proc.returncode == 0, proc.stderr
    doc = _doc(tmp_path)
    raw = json.loads(V2.read_text())["models"]
    for model, node in raw.items():
        want = sum(leaf["total"] for leaf in node["by_task_type"].values())
        got = doc["models"][model]
        assert got["overall_stats"]["total"] == want
        leaf = got["by_prompt_type"]["all"]["by_tool_success_rate"]["all"]["by_difficulty"][
            "very_easy"]["by_task_type"]["all"]
        assert leaf["total"] == want
    assert "not placed: by_task_type, by_prompt_type" in proc.stdout
    assert "empty: by_flaw_type" in proc.stdout
    # the model-level total_* of the file are stale: said, not used
    assert "models/deepseek-v3-671b/total_success says 754" in proc.stdout
    group = doc["test_groups"]["deepseek-v3-671b|all|all|very_easy|all"]
    assert group["tool_success_rate"] is None and group["total_tests"] == 820
    with sqlite3.connect(tmp_path / "e.db") as c:
        note = json.loads(c.execute("SELECT payload FROM events WHERE type = 'legacy.imported'")
                          .fetchone()[0])["notes"]
    assert note and "by_prompt_type" in note[0]


def test_the_empty_file_gives_0_cells_and_exit_0(tmp_path):
    proc = _import(tmp_path, EMPTY)
    assert proc.returncode == 0, proc.stderr
    assert "cells imported      0" in proc.stdout
    assert _doc(tmp_path)["summary"]["total_tests"] == 0


def test_names_fold_and_test_models_are_excluded(tmp_path):
    proc = _import(tmp_path, SUCCESSFUL, "--exclude-models", "test-model-2024")
    assert proc.returncode == 0, proc.stderr
    assert "excluded            test-model-2024 (1 tests)" in proc.stdout
    assert "test-model-2024" not in _doc(tmp_path)["models"]
    # a case variant of a known model folds into its canonical name
    variant = json.loads(SUCCESSFUL.read_text())
    variant["models"] = {"deepseek-v3-0324": variant["models"]["DeepSeek-V3-0324"]}
    f = tmp_path / "variant.json"
    f.write_text(json.dumps(variant))
    proc = _import(tmp_path, f)
    assert "deepseek-v3-0324 -> DeepSeek-V3-0324" in proc.stdout
    assert "deepseek-v3-0324" not in _doc(tmp_path)["models"]


# ---- idempotence, snapshots, bad input -------------------------------------------------


def test_reimport_adds_no_event(tmp_path):
    assert _import(tmp_path, PARTIAL).returncode == 0
    n = _count_events(tmp_path)
    before = (tmp_path / "m.json").read_bytes()
    again = _import(tmp_path, PARTIAL)
    assert again.returncode == 0 and "already imported" in again.stdout
    assert _count_events(tmp_path) == n == 229
    assert json.loads(before)["summary"] == _doc(tmp_path)["summary"]


def test_two_snapshots_under_one_source_count_once_the_later(tmp_path):
    assert _import(tmp_path, SUCCESSFUL, "--source", "old-system").returncode == 0
    assert _import(tmp_path, PARTIAL, "--source", "old-system").returncode == 0
    doc = _doc(tmp_path)
    assert doc["summary"]["total_tests"] == 4960  # v3-partial_success alone
    assert list(doc["summary"]["legacy_sources"]) == ["old-system"]
    assert "test-model-2024" not in doc["models"]
    assert _count_events(tmp_path) == 235 + 229  # both snapshots stay in the log
    rebuilt = ultra("project", "--rebuild", "--db", str(tmp_path / "e.db"), "--out",
                    str(tmp_path / "m.json"))
    assert rebuilt.returncode == 0 and _doc(tmp_path)["summary"]["total_tests"] == 4960
    with sqlite3.connect(tmp_path / "results.db") as c:
        assert c.execute("SELECT COUNT(*), SUM(n) FROM legacy_cells").fetchone() == (228, 4960)
    assert ultra("audit", "--db", str(tmp_path / "e.db"), "--out",
                 str(tmp_path / "m.json")).returncode == 0


@pytest.mark.parametrize("content", [b"", b'{"models": {"a": ', b"[1, 2]", b'{"version": "3.0"}',
                                     b"\xff\xfe not json"])
def test_bad_files_exit_2_with_one_line_and_store_nothing(tmp_path, content):
    assert _import(tmp_path, EMPTY).returncode == 0
    n = _count_events(tmp_path)
    f = tmp_path / "bad.json"
    f.write_bytes(content)
    proc = _import(tmp_path, f)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert _count_events(tmp_path) == n


def test_a_truncated_file_exits_2_and_leaves_the_log_as_it_was(tmp_path):
    assert _import(tmp_path, V2).returncode == 0
    n = _count_events(tmp_path)
    cut = tmp_path / "cut.json"
    cut.write_bytes(PARTIAL.read_bytes()[:100_000])
    proc = _import(tmp_path, cut)
    assert proc.returncode == 2 and "not JSON" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _count_events(tmp_path) == n
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert _import(fresh, cut).returncode == 2
    assert not (fresh / "e.db").exists()


def test_no_legacy_keys_without_legacy_imports():
    doc = mdb.render(mdb.FoldState())
    assert "legacy_tests" not in doc["summary"] and "legacy_sources" not in doc["summary"]


# ---- a mixed log: legacy + a demo run --------------------------------------------------


def test_mixed_log_totals_report_conditions_and_audit(tmp_path, demo):
    data = demo.copy_to(tmp_path)  # the session's demo run (tests/conftest.py)
    before = json.loads((data / "master_database.json").read_text())["summary"]["total_tests"]
    proc = ultra("import-legacy", str(PARTIAL), "--source", "old", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((data / "master_database.json").read_text())
    assert doc["summary"]["total_tests"] == before + 4960
    assert doc["summary"]["legacy_tests"] == 4960
    assert mdb.check_invariants(doc) == []
    sim = doc["models"]["sim-good"]["overall_stats"]
    assert sim["legacy_tests"] == 0 and sim["total"] > 0
    report = ultra("report", "--format", "csv", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    rows = report.stdout
    assert "DeepSeek-V3-0324 [legacy:old]" in rows and "sim-good" in rows
    assert "sim-good [legacy:old]" not in rows
    included = ultra("report", "--format", "csv", "--include-legacy", cwd=tmp_path).stdout
    assert "[legacy:old]" not in included.split("\n\n")[0].split("legacy sources")[0]
    run_id = events(data / "events.db", "--type", "run.started")[0]["run_id"]
    cmp_ = ultra("report", "--compare", "legacy:old", run_id, "--format", "markdown", cwd=tmp_path)
    assert cmp_.returncode == 0, cmp_.stderr
    assert "unpaired" in cmp_.stdout
    audit = ultra("audit", cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout
    assert "audit: clean" in audit.stdout and "1 legacy sources, 4960 tests" in audit.stdout


def test_the_same_import_on_two_machines_gives_logs_that_merge(tmp_path):
    """The events depend on the file and the command, not on the clock or the log: two logs
    that imported the same file merge with `ultra import` and count its tests once; an alias
    defined in a log applies to the imported cells when projecting."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for where in (a, b):
        assert _import(where, PARTIAL, "--source", "old").returncode == 0
    assert ultra("repair", "alias", "DeepSeek-V3-0324", "team-deepseek", "--db", str(b / "e.db"),
                 "--out", str(b / "m.json")).returncode == 0
    dump = ultra("events", "--db", str(a / "e.db"))
    (a / "a.jsonl").write_text(dump.stdout)
    merged = ultra("import", str(a / "a.jsonl"), "--db", str(b / "e.db"))
    assert merged.returncode == 0, merged.stderr
    assert ultra("project", "--db", str(b / "e.db"), "--out", str(b / "m.json")).returncode == 0
    doc = json.loads((b / "m.json").read_text())
    assert doc["summary"]["total_tests"] == doc["summary"]["legacy_tests"] == 4960
    assert "team-deepseek" in doc["models"] and "DeepSeek-V3-0324" not in doc["models"]
