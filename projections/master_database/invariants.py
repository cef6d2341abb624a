"""What every master_database.json must satisfy (checked by audit and the tests)."""

from __future__ import annotations

from typing import Any


from ultra.events import ERROR_CATEGORIES
from ultra.naming import rate_key
from projections.master_database.fold import DIGITS, TOKENS, UNPLACED


_SUMMED = (
    "full_success",
    "partial_success",
    "failure",
    "success",
    "total_errors",
    "tests_with_assistance",
    "tests_truncated",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    *(f"{c}_errors" for c in ERROR_CATEGORIES),
)
_LEVELS = ("by_prompt_type", "by_tool_success_rate", "by_difficulty", "by_task_type")


def _check_stats(where: str, s: Any, total_name: str = "total") -> list[str]:
    bad: list[str] = []
    if not isinstance(s, dict):
        return [f"{where}: stats missing"]
    try:
        t = s[total_name]
        if t != s["full_success"] + s["partial_success"] + s["failure"]:
            bad.append(f"{where}: {total_name} {t} != full + partial + failure")
        if s["success"] != s["full_success"] + s["partial_success"]:
            bad.append(f"{where}: success != full_success + partial_success")
        if "legacy_tests" in s and not 0 <= s["legacy_tests"] <= t:
            bad.append(f"{where}: legacy_tests {s['legacy_tests']} outside [0, {total_name}]")
        cats = sum(s[f"{c}_errors"] for c in ERROR_CATEGORIES)
        if cats != s["total_errors"]:
            bad.append(f"{where}: error categories sum to {cats}, total_errors is {s['total_errors']}")
        for name, value in s.items():
            if name.endswith("_rate") or name == "weighted_success_score":
                if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                    bad.append(f"{where}: {name} {value!r} outside [0, 1]")
        for name, count in (
            ("success_rate", s["success"]),
            ("full_success_rate", s["full_success"]),
            ("failure_rate", s["failure"]),
            ("assistance_rate", s["tests_with_assistance"]),
        ):
            expect = count / t if t else 0.0
            if abs(s[name] - expect) > 10 ** -(DIGITS - 1):
                bad.append(f"{where}: {name} {s[name]} is not {count}/{t}")
    except (KeyError, TypeError) as exc:
        bad.append(f"{where}: malformed stats ({exc!r})")
    return bad


def _check_node(where: str, node: Any, depth: int) -> list[str]:
    """Check a node's own stats and that its children add up to it, recursively."""
    if depth == len(_LEVELS):  # a leaf: stats only
        return _check_stats(where, node)
    if not isinstance(node, dict) or not isinstance(node.get(_LEVELS[depth]), dict):
        return [f"{where}: missing {_LEVELS[depth]}"]
    overall = node.get("overall_stats") or {}  # missing: reported as malformed below
    bad = _check_stats(where, overall)
    children = node[_LEVELS[depth]]
    for name, child in children.items():
        bad += _check_node(f"{where}/{name}", child, depth + 1)
    if bad:
        return bad
    child_stats = [c if depth + 1 == len(_LEVELS) else c["overall_stats"] for c in children.values()]
    for field in ("total", *_SUMMED, *(("legacy_tests",) if "legacy_tests" in overall else ())):
        got = sum(c[field] for c in child_stats)
        if got != overall[field]:
            bad.append(f"{where}: {field} {overall[field]} but its {_LEVELS[depth]} add up to {got}")
    return bad


def check_invariants(doc: Any) -> list[str]:
    """Every invariant of a master_database document; empty when it holds."""
    if not isinstance(doc, dict):
        return ["document is not a JSON object"]
    bad: list[str] = []
    models = doc.get("models")
    summary = doc.get("summary")
    if not isinstance(models, dict) or not isinstance(summary, dict):
        return ["document lacks models or summary"]
    for model, node in models.items():
        bad += _check_node(model, node, 0)
    bad += _check_stats("summary", summary, "total_tests")
    if bad:
        return bad
    for field in ("total_tests", *_SUMMED, *(("legacy_tests",) if "legacy_tests" in summary else ())):
        name = "total" if field == "total_tests" else field
        got = sum(m["overall_stats"][name] for m in models.values())
        if got != summary[field]:
            bad.append(f"summary: {field} {summary[field]} but the models add up to {got}")
    tested = sum(1 for m in models.values() if m["overall_stats"]["total"] > 0)
    if summary.get("models_tested") != tested:
        bad.append(f"summary: models_tested {summary.get('models_tested')} but {tested} models have tests")
    errored = sum(m.get("errored_attempts", 0) for m in models.values())
    if summary.get("errored_attempts") != errored:
        bad.append(f"summary: errored_attempts {summary.get('errored_attempts')} but models add up to {errored}")
    for model, m in models.items():
        if sum(m.get("errored_by_reason", {}).values()) != m.get("errored_attempts"):
            bad.append(f"{model}: errored_by_reason does not add up to errored_attempts")
    for name in TOKENS:
        got = sum((m.get("tokens_spent") or {}).get(name, 0) for m in models.values())
        if got != (summary.get("tokens_spent") or {}).get(name, 0):
            bad.append(f"summary: tokens_spent {name} but the models add up to {got}")
        for model, m in models.items():
            if (m.get("tokens_spent") or {}).get(name, 0) < m["overall_stats"][name]:
                bad.append(f"{model}: tokens_spent {name} below its counted tests' tokens")
    groups = doc.get("test_groups")
    if not isinstance(groups, dict):
        return [*bad, "document lacks test_groups"]
    for gid, g in groups.items():
        try:
            leaf = models[g["model"]]["by_prompt_type"][g["prompt_type"]]["by_tool_success_rate"][
                UNPLACED if g["tool_success_rate"] is None else rate_key(g["tool_success_rate"])
            ]["by_difficulty"][g["difficulty"]]["by_task_type"][g["task_type"]]
        except (KeyError, TypeError):
            bad.append(f"test_groups/{gid}: no such leaf in models")
            continue
        if leaf["total"] != g["total_tests"]:
            bad.append(f"test_groups/{gid}: total_tests {g['total_tests']} but the leaf has {leaf['total']}")
    group_total = sum(g.get("total_tests", 0) for g in groups.values())
    if group_total != summary["total_tests"]:
        bad.append(f"test_groups add up to {group_total}, summary says {summary['total_tests']}")
    return bad


__all__ = ["check_invariants"]
