"""master_database: the fold against an independent reference, incremental == rebuild."""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_helpers import append_and_project, completed, errored, event_lists, ts

from projections import master_database as mdb
from projections.repairs import collect_repairs
from ultra import events as ev
from ultra.errors import UserError
from ultra.naming import canonical_model
from ultra.projection.projecting import project
from ultra.eventlog.store import EventLog
from ultra.projection.projection_state import load_projection_state, save_projection_state

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- an independent reference: everything in memory, stats straight from the events ----


def reference_counted(events: list[ev.Event]) -> tuple[list[ev.TestCompleted], dict[str, str]]:
    aliases = {e.alias: e.canonical for e in events if isinstance(e, ev.AliasDefined)}
    retractions = [e for e in events if isinstance(e, ev.TestsRetracted)]

    def canon(m: str) -> str:
        return canonical_model(m, aliases)

    withdrawn = {i for r in retractions for i in r.withdraws}

    def removed(c: ev.TestCompleted) -> bool:
        return c.event_id in withdrawn

    seen: set[str] = set()
    counted = []
    for e in events:
        if isinstance(e, ev.TestCompleted) and not removed(e) and e.test_key not in seen:
            seen.add(e.test_key)
            counted.append(e)
    return counted, aliases


def reference_aggregates(events: list[ev.Event]) -> dict[str, str]:
    """metric -> mean | sum: the first declaration of a name holds; the workflow suite's
    metrics are means."""
    out: dict[str, str] = {}
    for e in events:
        if isinstance(e, ev.RunStarted):
            for m in e.metrics:
                out.setdefault(m.name, "mean" if m.name in ev.WORKFLOW_METRICS else m.aggregate)
    return out


def reference_stats(cs: list[ev.TestCompleted], aggregates: dict[str, str] | None = None) -> dict[str, Any]:
    t = len(cs)

    def share(n: float) -> float:
        return n / t if t else 0.0

    def mean(f: Any) -> float:
        return math.fsum(f(c) for c in cs) / t if t else 0.0

    rs = [c.result for c in cs]
    full = sum(r.outcome == "full_success" for r in rs)
    part = sum(r.outcome == "partial_success" for r in rs)
    cats = [r.error_category for r in rs if r.error_category is not None]
    out = {
        "total": t, "full_success": full, "partial_success": part, "failure": t - full - part,
        "success": full + part, "success_rate": share(full + part), "full_success_rate": share(full),
        "partial_rate": share(part), "failure_rate": share(t - full - part),
        "weighted_success_score": share(full + 0.5 * part),
        "avg_execution_time": mean(lambda c: c.execution_time),
        "avg_turns": mean(lambda c: c.result.turns),
        "avg_tool_calls": mean(lambda c: c.result.tool_calls),
        "tool_coverage_rate": mean(lambda c: c.result.tool_coverage),
        **({} if not cs else {
            f"avg_{m}": mean(lambda c, m=m: c.result.metrics[m])
            for m in ("workflow_score", "phase2_score", "quality_score", "final_score")}),
        "total_errors": len(cats),
        "tests_with_assistance": sum(r.assisted_turns > 0 for r in rs),
        "assistance_rate": share(sum(r.assisted_turns > 0 for r in rs)),
        "tests_truncated": sum("length" in r.finish_reasons for r in rs),
        "truncation_rate": share(sum("length" in r.finish_reasons for r in rs)),
        "prompt_tokens": sum(c.usage.prompt_tokens for c in cs),
        "completion_tokens": sum(c.usage.completion_tokens for c in cs),
        "reasoning_tokens": sum(c.usage.reasoning_tokens for c in cs),
    }
    for cat in ev.ERROR_CATEGORIES:
        out[f"{cat}_errors"] = cats.count(cat)
        out[f"{cat}_error_rate"] = share(cats.count(cat))
    for m in {m for r in rs for m in r.metrics} - set(ev.WORKFLOW_METRICS):  # a second suite's
        if (aggregates or {}).get(m) == "sum":
            out[f"total_{m}"] = math.fsum(r.metrics.get(m, 0.0) for r in rs)
        else:
            out[f"avg_{m}"] = mean(lambda c, m=m: c.result.metrics.get(m, 0.0))
    return out


def assert_stats_close(got: dict[str, Any], want: dict[str, Any], tol: float, where: str) -> None:
    assert set(got) == set(want), where
    for k, w in want.items():
        if isinstance(w, int) and not isinstance(w, bool):
            assert got[k] == w, f"{where}.{k}"
        else:
            assert math.isclose(got[k], w, rel_tol=tol, abs_tol=tol), f"{where}.{k}: {got[k]} != {w}"


def assert_matches_reference(doc: dict[str, Any], events: list[ev.Event], tol: float) -> None:
    counted, aliases = reference_counted(events)
    groups: dict[tuple, list] = defaultdict(list)
    for c in counted:
        model = canonical_model(c.model, aliases)
        path = (model, c.prompt_type, str(round(c.tool_success_rate, 4)), c.difficulty, c.task_type)
        for depth in range(6):
            groups[path[:depth]].append(c)
    errored_models = {canonical_model(e.model, aliases) for e in events if isinstance(e, ev.TestErrored)}
    # every token of every test event and preflight check, counted or not: what was paid
    spent: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for e in events:
        if isinstance(e, (ev.TestCompleted, ev.TestErrored, ev.RouteChecked)) and (
                e.usage.prompt_tokens or e.usage.completion_tokens or e.usage.reasoning_tokens):
            t = spent[canonical_model(e.model, aliases)]
            t[0] += e.usage.prompt_tokens
            t[1] += e.usage.completion_tokens
            t[2] += e.usage.reasoning_tokens
    assert set(doc["models"]) == {p[0] for p in groups if len(p) == 1} | errored_models | set(spent)
    for model, node in doc["models"].items():
        assert list(node["tokens_spent"].values()) == spent.get(model, [0, 0, 0]), model
    assert list(doc["summary"]["tokens_spent"].values()) == [sum(c) for c in zip([0, 0, 0], *spent.values())]
    aggregates = reference_aggregates(events)
    want = reference_stats(groups[()], aggregates)
    summary = {**doc["summary"], "total": doc["summary"]["total_tests"]}
    assert_stats_close({k: summary[k] for k in want}, want, tol, "summary")
    assert summary["total"] == len(counted)
    levels = ["by_prompt_type", "by_tool_success_rate", "by_difficulty", "by_task_type"]
    for path, cs in groups.items():
        if not path:
            continue
        node = doc["models"][path[0]]
        for level, name in zip(levels, path[1:]):
            node = node[level][name]
        stats = node if len(path) == 5 else node["overall_stats"]
        assert_stats_close(stats, reference_stats(cs, aggregates), tol, "/".join(path))
    leaves = {p for p in groups if len(p) == 5}
    assert {tuple(g[k] for k in ("model", "prompt_type")) for g in doc["test_groups"].values()} == \
        {p[:2] for p in leaves}
    assert len(doc["test_groups"]) == len(leaves)
    for model in errored_models:
        n = sum(1 for e in events if isinstance(e, ev.TestErrored) and canonical_model(e.model, aliases) == model)
        assert doc["models"][model]["errored_attempts"] == n
    assert doc["summary"]["duplicate_completions"] + doc["summary"]["retracted_completions"] + \
        len(counted) == sum(isinstance(e, ev.TestCompleted) for e in events)


# ---- the pure fold without SQLite --------------------------------------------------------


def pure_fold(events: list[ev.Event]) -> mdb.FoldState:
    repairs = collect_repairs(enumerate(events, 1))
    earlier: dict[str, list[ev.TestCompleted]] = defaultdict(list)
    items = []
    for seq, e in enumerate(events, 1):
        if isinstance(e, ev.TestCompleted):
            items.append((seq, e, list(earlier[e.test_key])))
            earlier[e.test_key].append(e)
        else:
            items.append((seq, e, ()))
    state = mdb.FoldState()
    mdb.fold(state, items, repairs)
    state.last_seq = len(events)
    return state


def project_events(events: list[ev.Event], tmp: Path, splits: list[int] = ()) -> tuple[bytes, bytes]:
    """(bytes after incremental projections at each split, bytes of a rebuild)."""
    db, out = append_and_project(events, tmp, splits)
    incremental = out.read_bytes()
    project(db, out, rebuild=True)
    return incremental, out.read_bytes()


# ---- properties --------------------------------------------------------------------------


@SETTINGS
@given(event_lists(max_size=40))
def test_projection_equals_an_independent_reference_fold(events):
    with tempfile.TemporaryDirectory() as tmp:
        _, rebuilt = project_events(events, Path(tmp))
    doc = json.loads(rebuilt)
    assert_matches_reference(doc, events, tol=1e-6)  # the file rounds to 6 decimals
    assert mdb.check_invariants(doc) == []
    assert_matches_reference(mdb.render(pure_fold(events), digits=None), events, tol=1e-9)


def test_a_model_whose_only_tests_repeat_others_keys_at_no_cost_is_not_listed(tmp_path):
    """Found by the property above: a repeat that cost nothing made its model a node with no
    tests (errored tests and preflights listed a model only for tokens spent; now all do)."""
    events = [completed(0), completed(1, event_id="c0-again", test_key="key-0", model="qwen2.5-7b-instruct")]
    _, rebuilt = project_events(events, tmp_path)
    assert sorted(json.loads(rebuilt)["models"]) == ["DeepSeek-V3-0324"]


@SETTINGS
@given(event_lists(max_size=40), st.lists(st.integers(0, 40), max_size=4))
def test_incremental_over_any_split_is_byte_identical_to_a_rebuild(events, splits):
    with tempfile.TemporaryDirectory() as tmp:
        incremental, rebuilt = project_events(events, Path(tmp), [min(s, len(events)) for s in splits])
    assert incremental == rebuilt


@SETTINGS
@given(event_lists(max_size=40, unique_keys=True), st.randoms(use_true_random=False))
def test_any_permutation_gives_the_same_counts_and_averages(events, rng):
    shuffled = list(events)
    rng.shuffle(shuffled)
    a = mdb.render(pure_fold(events), digits=None)
    b = mdb.render(pure_fold(shuffled), digits=None)
    for doc in (a, b):
        doc.pop("generated_at")  # the last event's time: order-dependent by definition
    assert _close(a, b, 1e-9), (a, b)


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


@SETTINGS
@given(event_lists(max_size=30), st.data())
def test_appending_any_subset_again_changes_nothing(events, data):
    subset = data.draw(st.lists(st.sampled_from(events), max_size=10)) if events else []
    with tempfile.TemporaryDirectory() as tmp:
        db, out = Path(tmp) / "e.db", Path(tmp) / "m.json"
        with EventLog.open(db) as log:
            log.append(events)
            project(db, out)
            before = out.read_bytes()
            assert log.append(subset) == 0
            assert log.append(reversed(events)) == 0
            assert log.count() == len({e.event_id for e in events})
        project(db, out)
        assert out.read_bytes() == before
        project(db, out, rebuild=True)
        assert out.read_bytes() == before


# ---- examples ----------------------------------------------------------------------------


def _doc(tmp_path: Path, events: list[ev.Event]) -> dict[str, Any]:
    _, rebuilt = project_events(events, tmp_path)
    return json.loads(rebuilt)


def test_structure_names_and_instances_fold_into_one_model(tmp_path):
    doc = _doc(tmp_path, [
        completed(1, model="DeepSeek-V3-0324", instance="DeepSeek-V3-0324"),
        completed(2, model="DeepSeek-V3-0324-2", instance="DeepSeek-V3-0324-2", outcome="partial_success",
                  error_category="timeout"),
        completed(3, model="deepseek-v3-0324", instance="DeepSeek-V3-0324-3", prompt_type="flawed_sequence_disorder",
                  outcome="failure", error_category="tool_selection"),
    ])
    assert list(doc["models"]) == ["DeepSeek-V3-0324"]
    m = doc["models"]["DeepSeek-V3-0324"]
    leaf = m["by_prompt_type"]["baseline"]["by_tool_success_rate"]["0.8"]["by_difficulty"]["easy"][
        "by_task_type"]["simple_task"]
    assert (leaf["total"], leaf["full_success"], leaf["partial_success"]) == (2, 1, 1)
    assert leaf["weighted_success_score"] == 0.75
    assert m["overall_stats"]["total"] == 3 and m["overall_stats"]["total_errors"] == 2
    assert set(m["by_prompt_type"]) == {"baseline", "flawed_sequence_disorder"}
    assert doc["summary"]["models_tested"] == 1
    assert doc["summary"]["last_test_time"] == ts(3) == doc["generated_at"]
    group = doc["test_groups"]["DeepSeek-V3-0324|baseline|0.8|easy|simple_task"]
    assert group == {"model": "DeepSeek-V3-0324", "prompt_type": "baseline", "tool_success_rate": 0.8,
                     "difficulty": "easy", "task_type": "simple_task", "num_instances": 2,
                     "total_tests": 2, "timestamp": ts(2)}


def test_overall_stats_are_test_weighted_not_averages_of_rates(tmp_path):
    events = [completed(i, task_type="a") for i in range(3)] + [completed(3, task_type="b", outcome="failure",
                                                                          error_category="other")]
    doc = _doc(tmp_path, events)
    overall = doc["models"]["DeepSeek-V3-0324"]["overall_stats"]
    assert overall["success_rate"] == 0.75  # not (1.0 + 0.0) / 2


def test_alias_applies_retroactively_and_triggers_a_rebuild(tmp_path):
    db, out = tmp_path / "e.db", tmp_path / "m.json"
    with EventLog.open(db) as log:
        log.append([completed(1, model="dsv3"), completed(2)])
        assert project(db, out).rebuilt
        assert set(json.loads(out.read_bytes())["models"]) == {"dsv3", "DeepSeek-V3-0324"}
        log.append([ev.AliasDefined(recorded_at=ts(5), alias="dsv3", canonical="DeepSeek-V3-0324")])
    report = project(db, out)
    assert report.rebuilt
    doc = json.loads(out.read_bytes())
    assert list(doc["models"]) == ["DeepSeek-V3-0324"]
    assert doc["models"]["DeepSeek-V3-0324"]["overall_stats"]["total"] == 2
    with EventLog.open(db) as log:
        log.append([completed(6, model="dsv3")])
    assert not project(db, out).rebuilt
    assert json.loads(out.read_bytes())["summary"]["total_tests"] == 3


def test_retraction_removes_what_it_lists_only_and_retests_count(tmp_path):
    doc = _doc(tmp_path, [
        completed(1, run_id="bad", outcome="failure", error_category="timeout"),
        completed(2, run_id="good"),
        ev.TestsRetracted(recorded_at=ts(3), selector=ev.Selector(run_id="bad"), reason="broken endpoint",
                          withdraws=["c1"]),
        completed(4, run_id="bad", test_key="key-1"),  # the retest, after the retraction
    ])
    s = doc["summary"]
    assert (s["total_tests"], s["full_success"], s["failure"]) == (2, 2, 0)
    assert s["retracted_completions"] == 1 and s["duplicate_completions"] == 0


def test_a_retraction_from_a_skewed_clock_hides_only_what_it_lists(tmp_path):
    """Recorded "in 2099" by a machine with a wrong clock, and imported before the
    completions it names: it still withdraws exactly those, and no later retest."""
    retraction = ev.TestsRetracted(recorded_at="2099-01-01T00:00:00.000000Z",
                                   selector=ev.Selector(model="DeepSeek-V3-0324"), reason="skewed",
                                   withdraws=["c1"])
    doc = _doc(tmp_path, [
        retraction,
        completed(1, outcome="failure", error_category="timeout"),
        completed(2),
        completed(3, test_key="key-1"),  # the retest
    ])
    s = doc["summary"]
    assert (s["total_tests"], s["full_success"], s["retracted_completions"]) == (2, 2, 1)


def test_duplicates_count_once_and_errored_tests_stay_out_of_success(tmp_path):
    doc = _doc(tmp_path, [
        completed(1),
        completed(2, event_id="again", test_key="key-1", outcome="failure", error_category="timeout"),
        errored(3, reason="timeout"),
        errored(4, reason="rate_limited"),
        errored(5, model="grok-3", reason="server_error"),
    ])
    s = doc["summary"]
    assert (s["total_tests"], s["full_success"], s["duplicate_completions"]) == (1, 1, 1)
    assert s["errored_attempts"] == 3 and s["models_tested"] == 1
    ds = doc["models"]["DeepSeek-V3-0324"]
    assert ds["errored_attempts"] == 2 and ds["errored_by_reason"] == {"timeout": 1, "rate_limited": 1}
    assert doc["models"]["grok-3"]["overall_stats"]["total"] == 0
    assert mdb.check_invariants(doc) == []


def test_same_log_same_bytes_and_no_wall_clock(tmp_path):
    outcomes = [random.Random(i).choice(["full_success", "failure"]) for i in range(30)]
    events = [completed(i, outcome=o, error_category=None if o == "full_success" else "other")
              for i, o in enumerate(outcomes)]
    a = project_events(events, tmp_path / "a" if (tmp_path / "a").mkdir() is None else None)[1]
    b = project_events(events, tmp_path / "b" if (tmp_path / "b").mkdir() is None else None)[1]
    assert a == b
    doc = json.loads(a)
    assert doc["generated_at"] == ts(29) and doc["last_seq"] == 30


def test_empty_log_projects_to_an_empty_document(tmp_path):
    doc = _doc(tmp_path, [])
    assert doc["models"] == {} and doc["summary"]["total_tests"] == 0
    assert doc["generated_at"] is None and mdb.check_invariants(doc) == []


def test_saved_state_round_trips_exactly():
    events = [completed(i, execution_time=0.1 * i + 1e-17) for i in range(10)]
    state = pure_fold(events)
    again = mdb.load_state(mdb.dump_state(state))
    assert msgspec.json.encode(mdb.render(again)) == msgspec.json.encode(mdb.render(state))


def test_project_without_a_log_is_a_user_error(tmp_path):
    from ultra.errors import UserError

    with pytest.raises(UserError, match="no event log"):
        project(tmp_path / "missing.db", tmp_path / "m.json")


def test_check_invariants_catches_broken_sums(tmp_path):
    doc = _doc(tmp_path, [completed(1), completed(2, task_type="other")])
    doc["models"]["DeepSeek-V3-0324"]["overall_stats"]["total"] = 3
    assert any("total" in m for m in mdb.check_invariants(doc))
    doc = _doc(tmp_path / "x" if (tmp_path / "x").mkdir() is None else None, [completed(1)])
    doc["summary"]["success_rate"] = 1.5
    assert any("outside [0, 1]" in m for m in mdb.check_invariants(doc))


def test_keys_come_in_the_documented_order(tmp_path):
    doc = _doc(tmp_path, [completed(1, simulated=True), completed(2, instance="DeepSeek-V3-0324-2"),
                          completed(3, outcome="failure", error_category="timeout")])
    assert list(doc) == ["schema_version", "generated_at", "last_seq", "chain_head", "summary",
                         "test_groups", "models"]
    leaf = doc["models"]["DeepSeek-V3-0324"]["overall_stats"]
    keys = list(leaf)
    assert keys[0] == "total"
    rates = [k for k in keys if k.endswith("_rate") and "error" not in k] + ["weighted_success_score"]
    counts = ["success", "full_success", "partial_success", "failure", "tests_with_assistance",
              "tests_truncated", "prompt_tokens", "completion_tokens", "reasoning_tokens"]
    means = [k for k in keys if k.startswith("avg_")]
    errors = keys[keys.index("total_errors"):]
    assert keys == ["total", *sorted(rates, key=keys.index), *counts, *means, *errors]
    assert max(map(keys.index, rates)) < keys.index("success") < min(map(keys.index, means))
    assert errors[1:3] == ["tool_call_format_errors", "tool_call_format_error_rate"]
    s = doc["summary"]
    assert list(s)[0] == "total_tests"
    assert (s["simulated_tests"], s["simulated_share"]) == (1, 0.333333)
    group = doc["test_groups"]["DeepSeek-V3-0324|baseline|0.8|easy|simple_task"]
    assert group["num_instances"] == 3  # three tests (instances), on two routes


def test_a_saved_state_is_used_only_when_it_is_this_fold_and_not_ahead_of_the_log(tmp_path):
    """The guards on the saved state: another fold version, a state ahead of the log (say,
    saved for a longer log) or a garbled one means a rebuild, never a wrong increment."""
    from ultra.projection.projecting import PROJECTION_NAME

    db, out = tmp_path / "e.db", tmp_path / "m.json"
    with EventLog.open(db) as log:
        log.append([completed(1), completed(2)])
    assert project(db, out).rebuilt
    with EventLog.open(db) as log:
        log.append([completed(3)])
    r = project(db, out)
    assert not r.rebuilt and r.events_folded == 1  # the ordinary increment
    want = out.read_bytes()
    with EventLog.open(db) as log:
        version, seq, text = load_projection_state(log, PROJECTION_NAME)
        ahead = mdb.load_state(text)
        ahead.last_seq = 99  # a state for events this log does not have
        ahead.leaves = {}
        bad = [(version, 99, mdb.dump_state(ahead).decode()),  # ahead of the log
               (version + 1, seq, text),  # another fold version
               (version, seq, "{not json")]  # garbled
    for saved in bad:
        with EventLog.open(db) as log:
            log.connection.execute("DELETE FROM projection_state WHERE name = ?", (PROJECTION_NAME,))
            save_projection_state(log, PROJECTION_NAME, *saved)
        r = project(db, out)
        assert r.rebuilt and r.last_seq == 3 and r.events_folded == 3, saved
        assert out.read_bytes() == want


# ---- rendering again: what did not change is reused, never an edit -------------------------


@SETTINGS
@given(event_lists(max_size=40), st.lists(st.integers(0, 40), max_size=5))
def test_rendering_again_over_any_split_is_byte_identical_to_a_full_render(events, cuts):
    """Each piece's state (any order of prefixes, repairs included) rendered with the
    previous file and its memo gives the bytes of a full render."""
    previous, memo = None, None
    for cut in [*cuts, len(events)]:
        state = pure_fold(events[:cut])
        data, memo = mdb.render_file(state, previous, memo)
        assert data == mdb.render_bytes(state)
        assert memo.sha256 == hashlib.sha256(data).hexdigest()
        previous = data


def _two_models() -> tuple[mdb.FoldState, mdb.FoldState]:
    """A state of two models, and the same after one more test of the first model."""
    events = [completed(1, model="grok-3"), completed(2, model="kimi-k2", outcome="failure",
                                                      error_category="timeout")]
    return pure_fold(events), pure_fold([*events, completed(3, model="grok-3", turns=7)])


def _forged(data: bytes, memo: mdb.RenderMemo) -> tuple[bytes, mdb.RenderMemo]:
    """`data` with kimi-k2's errored_attempts set to 7, and a memo vouching for it."""
    at = data.index(b'"errored_attempts": 0', data.index(b'"kimi-k2": {'))
    forged = data[:at] + b'"errored_attempts": 7' + data[at + 21:]
    return forged, msgspec.structs.replace(memo, sha256=hashlib.sha256(forged).hexdigest())


def test_only_the_models_whose_inputs_changed_are_rendered_again():
    """Seen through a forged file that its memo vouches for: the untouched model's
    subtree is taken from it as it is, the touched one is rendered afresh."""
    before, after = _two_models()
    forged, memo = _forged(*mdb.render_file(before))
    data, _ = mdb.render_file(after, forged, memo)
    got, want = json.loads(data), json.loads(mdb.render_bytes(after))
    assert got["models"]["kimi-k2"]["errored_attempts"] == 7  # reused, not rendered
    assert got["models"]["grok-3"] == want["models"]["grok-3"]
    assert got["summary"] == want["summary"] and got["test_groups"] == want["test_groups"]


def test_a_memo_of_another_renderer_or_file_reuses_nothing():
    before, after = _two_models()
    forged, memo = _forged(*mdb.render_file(before))
    want = mdb.render_bytes(after)
    for file, m in [(forged, msgspec.structs.replace(memo, renderer="another version")),
                    (forged + b" ", memo),  # bytes the memo does not describe
                    (forged.replace(b'"errored_attempts": 7', b'"errored_attempts": 8'), memo),
                    (forged, None), (None, memo)]:
        assert mdb.render_file(after, file, m)[0] == want


@pytest.mark.parametrize("damage", ["edited", "foreign", "missing", "not a file"])
def test_project_renders_afresh_unless_the_file_is_the_one_it_wrote(tmp_path, damage):
    """An edit of master_database.json, another file in its place, or none: the next
    `ultra project` writes the bytes of a full render, so an edit never propagates."""
    db, out = tmp_path / "e.db", tmp_path / "m.json"
    with EventLog.open(db) as log:
        log.append([completed(1, model="grok-3"), completed(2, model="kimi-k2")])
    project(db, out)
    if damage == "edited":  # same length, still JSON, inside the model the next event leaves alone
        text = out.read_bytes()
        at = text.index(b'"errored_attempts": 0', text.index(b'"kimi-k2": {'))
        out.write_bytes(text[:at] + b'"errored_attempts": 5' + text[at + 21:])
    elif damage == "foreign":
        other = tmp_path / "other"
        other.mkdir()
        _, foreign = project_events([completed(1, model="kimi-k2", outcome="failure",
                                               error_category="other")], other)
        out.write_bytes(foreign)
    elif damage == "missing":
        out.unlink()
    else:
        out.unlink()
        out.mkdir()  # a directory: unreadable as a file, and not writable over
    with EventLog.open(db) as log:
        log.append([completed(3, model="grok-3")])
    if damage == "not a file":
        with pytest.raises(UserError):
            project(db, out)
        out.rmdir()
    r = project(db, out)
    assert not r.rebuilt  # the fold is incremental; only the rendering starts afresh
    incremental = out.read_bytes()
    project(db, out, rebuild=True)
    assert incremental == out.read_bytes()


def test_metric_names_that_vary_within_a_leaf_sum_by_name_in_first_seen_order():
    """The fold keeps plain per-leaf records while it runs; names a suite adds later, or
    gives in another order, still sum by name, and a fold resumed from its saved state at
    any point sums exactly as one from zero."""
    events = [
        completed(1, metrics={"x": 0.5}),
        completed(2),  # the workflow metrics only, x missing
        completed(3, metrics={"y": 0.25}, workflow_score=0.1),
        completed(4, metrics={"quality_score": 0.0, "x": 1e-17}),  # another order
    ]
    whole = pure_fold(events)
    [acc] = whole.leaves.values()
    assert list(acc.metrics) == ["x", "final_score", "workflow_score", "phase2_score",
                                 "quality_score", "y"]
    assert acc.metrics["x"] == 0.5 + 1e-17 and acc.metrics["y"] == 0.25
    assert acc.metrics["workflow_score"] == 0.9 + 0.9 + 0.1 + 0.9
    leaf = mdb.render(whole)["models"]["DeepSeek-V3-0324"]["by_prompt_type"]["baseline"]
    assert leaf["overall_stats"]["avg_y"] == round(0.25 / 4, mdb.DIGITS)
    for split in range(len(events) + 1):
        first = pure_fold(events[:split])
        resumed = mdb.load_state(mdb.dump_state(first))
        rest = [(seq, e, ()) for seq, e in enumerate(events, 1) if seq > split]
        mdb.fold(resumed, rest, collect_repairs([]))
        resumed.last_seq = len(events)
        assert mdb.render_bytes(resumed) == mdb.render_bytes(whole), split
