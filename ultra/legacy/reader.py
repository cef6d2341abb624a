"""A whole legacy file: its nested cells or (version 2.0) its flat breakdowns, the
anomalies found, and where its own aggregates disagree with its leaves."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any


from ultra.errors import UserError
from ultra.legacy.cells import (ALL, AVERAGES, ERRORS_UNSUMMED, LEVELS, MALFORMED, V2_BREAKDOWNS, Cell,
                                Reading, count_of, extras_of, read_leaf)

def _rate_of(key: str) -> float | None:
    try:
        r = float(key)
    except ValueError:
        return None
    return r if 0.0 <= r <= 1.0 else None


def _leaves(node: Any, path: list[str], depth: int):
    """(path, keys, leaf) below a model node, depth-first in the file's order."""
    if depth == len(LEVELS):
        yield path, leaf_keys(path), node
        return
    children = node.get(LEVELS[depth]) if isinstance(node, dict) else None
    if not isinstance(children, dict):
        return
    for key, child in children.items():
        yield from _leaves(child, [*path, LEVELS[depth], str(key)], depth + 1)


def leaf_keys(path: list[str]) -> list[str]:
    return path[1::2]  # model, then the key at each level


def _tally(cells: list[Cell]) -> tuple[int, int, int, int]:
    t = sum(c.total for c in cells)
    return (t, sum(c.full_success for c in cells), sum(c.partial_success for c in cells),
            sum(c.failure for c in cells))


def _cell(model: str, keys: tuple[str, float | None, str, str], path: str,
          triple: tuple[int, int, int], counting: str, anomaly: str, leaf: dict) -> tuple[Cell, bool]:
    full, partial, failure = triple
    total = full + partial + failure
    assisted, errors, sums, summed = extras_of(leaf, total)
    prompt, rate, difficulty, task = keys
    return Cell(model=model, prompt_type=prompt, tool_success_rate=rate, difficulty=difficulty,
                task_type=task, path=path, counting=counting, full_success=full,
                partial_success=partial, failure=failure, tests_with_assistance=assisted,
                errors=errors, sums=sums, anomaly=anomaly), summed


def read(data: bytes, *, what: str = "file") -> Reading:
    """Read a legacy master_database.json (raises UserError if it is not one)."""
    try:
        doc = json.loads(data)  # the stdlib: the legacy files hold NaN, which it reads
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{what}: not JSON ({str(exc)[:120]}); nothing imported") from None
    if not isinstance(doc, dict) or "models" not in doc or not isinstance(doc["models"], (dict, list)) \
            or (isinstance(doc["models"], list) and doc["models"]):
        raise UserError(f"{what}: not a master_database.json of the legacy system (no 'models'"
                        " object); nothing imported")
    models = doc["models"] or {}
    if not all(isinstance(m, dict) for m in models.values()):
        raise UserError(f"{what}: not a master_database.json of the legacy system (a model is"
                        " not an object); nothing imported")
    version = str(doc.get("version", ""))
    last_updated = doc.get("last_updated")
    reading = Reading(sha256=hashlib.sha256(data).hexdigest(), version=version,
                      last_updated=last_updated if isinstance(last_updated, str) else "",
                      cells=[], anomalies={}, disagreements=[], notes=[])
    nested = any(isinstance(m.get("by_prompt_type"), dict)
                 and any(isinstance(p, dict) and "by_tool_success_rate" in p
                         for p in m["by_prompt_type"].values()) for m in models.values())
    if models and not nested:
        if not any(isinstance(m.get("by_task_type"), dict) for m in models.values()):
            raise UserError(f"{what}: neither nested cells (by_prompt_type > by_tool_success_rate"
                            " > ...) nor version 2.0 breakdowns (by_task_type); nothing imported")
        _read_v2(models, reading)
    else:
        _read_nested(models, reading)
    _check_summary(doc, reading)
    return reading


def _anomaly(reading: Reading, kind: str, path: str) -> None:
    reading.anomalies.setdefault(kind, []).append(path)


def _read_nested(models: dict, reading: Reading) -> None:
    for model, node in models.items():
        prompt_totals: dict[str, int] = {}
        mine: list[Cell] = []
        for path, keys, leaf in _leaves(node, ["models", str(model)], 0):
            where = "/".join(path)
            _, prompt, rk, difficulty, task = keys
            rate = _rate_of(rk)
            if rate is None or not all(k.strip() for k in (prompt, difficulty, task)):
                _anomaly(reading, MALFORMED, where)
                continue
            triple, counting, kind = read_leaf(leaf)
            if triple is None:
                _anomaly(reading, kind, where)
                continue
            if sum(triple) == 0:
                reading.empty_leaves += 1
                continue
            if kind:
                _anomaly(reading, kind, where)
            cell, summed = _cell(str(model), (prompt, rate, difficulty, task), where, triple,
                                 counting, kind, leaf)
            if not summed:
                _anomaly(reading, ERRORS_UNSUMMED, where)
            mine.append(cell)
            prompt_totals[prompt] = prompt_totals.get(prompt, 0) + cell.total
        reading.cells += mine
        stated, _ = count_of(node, "total_tests")
        got = sum(c.total for c in mine)
        if stated is not None and stated != got:
            reading.disagreements.append(
                f"models/{model}/total_tests says {stated}, its leaves add up to {got}")
        prompts = node.get("by_prompt_type") if isinstance(node.get("by_prompt_type"), dict) else {}
        for prompt, pnode in prompts.items():
            summary = pnode.get("summary") if isinstance(pnode, dict) else None
            if isinstance(summary, dict):
                stated, _ = count_of(summary, "total")
                if stated is not None and stated != prompt_totals.get(prompt, 0):
                    reading.disagreements.append(
                        f"models/{model}/by_prompt_type/{prompt}/summary/total says {stated},"
                        f" its leaves add up to {prompt_totals.get(prompt, 0)}")


def _read_v2(models: dict, reading: Reading) -> None:
    unplaced: set[str] = set()
    empty: set[str] = set()
    for model, node in models.items():
        parts: list[Cell] = []
        for task, leaf in (node.get("by_task_type") or {}).items():
            where = f"models/{model}/by_task_type/{task}"
            triple, counting, kind = read_leaf(leaf)
            if triple is None:
                _anomaly(reading, kind, where)
                continue
            if kind:
                _anomaly(reading, kind, where)
            cell, summed = _cell(str(model), (ALL, None, ALL, ALL), where, triple, counting, kind,
                                 leaf)
            if not summed:
                _anomaly(reading, ERRORS_UNSUMMED, where)
            parts.append(cell)
        if not parts:
            continue
        t = sum(c.total for c in parts)
        difficulty = ALL
        for name in V2_BREAKDOWNS[1:]:
            br = node.get(name)
            if not isinstance(br, dict) or not br:
                empty.add(name)
                continue
            if name == "by_difficulty" and len(br) == 1:
                (only, leaf), = br.items()
                if isinstance(leaf, dict) and leaf.get("total") == t:
                    difficulty = str(only)
                    continue
            unplaced.add(name)
            totals = [v.get("total") for v in br.values() if isinstance(v, dict)]
            if all(isinstance(x, int) for x in totals) and sum(totals) != t:
                reading.disagreements.append(
                    f"models/{model}/{name} adds up to {sum(totals)} tests, by_task_type to {t}")
        unplaced.add("by_task_type")
        errors: dict[str, int] = {}
        sums: dict[str, float] = {}
        for c in parts:
            for k, v in c.errors.items():
                errors[k] = errors.get(k, 0) + v
        for name in AVERAGES.values():  # a mean the cell keeps only if every part has it
            if all(name in c.sums for c in parts):
                sums[name] = sum(c.sums[name] for c in parts)
        kinds = sorted({c.anomaly for c in parts if c.anomaly})
        cell = Cell(model=str(model), prompt_type=ALL, tool_success_rate=None,
                    difficulty=difficulty, task_type=ALL, path=f"models/{model}",
                    counting="+".join(sorted({c.counting for c in parts})) if len(
                        {c.counting for c in parts}) > 1 else parts[0].counting,
                    full_success=sum(c.full_success for c in parts),
                    partial_success=sum(c.partial_success for c in parts),
                    failure=sum(c.failure for c in parts),
                    tests_with_assistance=sum(c.tests_with_assistance for c in parts),
                    errors=errors, sums=sums, anomaly=",".join(kinds))
        reading.cells.append(cell)
        for field, mine in (("total_tests", cell.total), ("total_success", None),
                            ("total_partial", cell.partial_success),
                            ("total_failure", cell.failure)):
            stated, _ = count_of(node, field)
            if field == "total_success":
                mine = cell.full_success + cell.partial_success
            if stated is not None and stated != mine:
                reading.disagreements.append(
                    f"models/{model}/{field} says {stated}, its by_task_type leaves add up to {mine}")
    placed = [n for n in V2_BREAKDOWNS if n not in unplaced and n not in empty]
    note = (f"version {reading.version or '2.0'} layout: flat breakdowns per model, so each model"
            f" is imported as one cell of its totals (the sum of its by_task_type leaves);"
            f" not placed: {', '.join(n for n in V2_BREAKDOWNS if n in unplaced) or 'none'}")
    if empty:
        note += f"; empty: {', '.join(n for n in V2_BREAKDOWNS if n in empty)}"
    if placed:
        note += f"; placed: {', '.join(placed)}"
    note += f"; prompt type, tool success rate and task type are '{ALL}'"
    reading.notes.append(note)


def _check_summary(doc: dict, reading: Reading) -> None:
    summary = doc.get("summary")
    if not isinstance(summary, dict):
        return
    t, full, partial, failure = _tally(reading.cells)
    for field, mine, how in (("total_tests", t, ""), ("total_success", full + partial, " (full + partial)"),
                             ("total_partial", partial, ""), ("total_failure", failure, "")):
        stated, _ = count_of(summary, field)
        if stated is not None and stated != mine:
            reading.disagreements.append(f"summary/{field} says {stated}, the leaves add up to"
                                         f" {mine}{how}")
    listed = summary.get("models_tested")
    if isinstance(listed, list):
        models = {c.model for c in reading.cells}
        if set(map(str, listed)) != models:
            reading.disagreements.append(f"summary/models_tested lists {len(listed)} models, the"
                                         f" leaves have tests of {len(models)}")


def event_id(source: str, sha256: str, path: str = "") -> str:
    """Deterministic: the same file under the same source gives the same ids (re-import
    stores nothing), another file or source other ids."""
    return "legacy-" + hashlib.sha256(f"{source}\0{sha256}\0{path}".encode()).hexdigest()[:40]


def fold_names(names: list[str], canonical: Callable[[str], str]) -> dict[str, str]:
    return {n: canonical(n) for n in names}


__all__ = ["event_id", "fold_names", "leaf_keys", "read"]
