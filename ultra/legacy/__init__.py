"""Reading a master_database.json of the system ultra replaces (`ultra import-legacy`).

Pure: bytes in, a `Reading` out (the cells to record as `legacy.cell` events, the
anomalies, the notes, and where the file's own aggregates disagree with its leaves). The
shell (`ultra.cli`) turns it into events.

Each leaf is read the way it was written. A leaf spells its counts as `success` or
`successful`, `partial_success` or `partial`, `full_success`, `failed` or `failure`, and
`success` counts either the full successes alone (`full`) or full + partial
(`full+partial`). Which one is decided per leaf from its own arithmetic: the counts first
(`full_success + partial == success`, `failed == total - success`, ...), then, where the
counts allow both, the rates (`full_success_rate`, `partial_success_rate`). A leaf that
fits neither, or whose rates disagree with its counts, is an anomaly: imported as its
counts say when they are consistent, skipped otherwise.

Version 2.0 files have no cells, only flat breakdowns per model (by_task_type,
by_prompt_type, by_flaw_type, by_difficulty): each model becomes one cell of its totals
(the sum of its by_task_type leaves), with `all` for the dimensions no breakdown places.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

import msgspec

from ultra.errors import UserError
from ultra.events import ERROR_CATEGORIES

ALL = "all"  # a dimension a version 2.0 file does not place (its breakdowns are marginals)
LEVELS = ("by_prompt_type", "by_tool_success_rate", "by_difficulty", "by_task_type")
V2_BREAKDOWNS = ("by_task_type", "by_prompt_type", "by_flaw_type", "by_difficulty")
# A leaf's averages -> the per-test sums ultra keeps (the cell stores avg × total)
AVERAGES: dict[str, str] = {
    "avg_execution_time": "execution_time",
    "avg_turns": "turns",
    "avg_tool_calls": "tool_calls",
    "tool_coverage_rate": "tool_coverage",
    "avg_final_score": "final_score",
    "avg_workflow_score": "workflow_score",
    "avg_phase2_score": "phase2_score",
    "avg_quality_score": "quality_score",
}
METRICS = ("final_score", "workflow_score", "phase2_score", "quality_score")  # the suite's order
TOLERANCE = 1e-6  # a rate agrees with its counts within this

# anomaly kinds, in the order the report lists them
RATES_DISAGREE = "rates_disagree"  # counts consistent, rates not: imported as counted
UNDECIDED = "undecided"  # counts allow both countings and the rates settle neither: skipped
FITS_NEITHER = "fits_neither"  # the counts do not add up under either counting: skipped
MALFORMED = "malformed"  # no usable total or counts, or a cell key ultra cannot hold: skipped
ERRORS_UNSUMMED = "errors_unsummed"  # categories do not sum to total_errors: imported, rest as other
SKIPPING_KINDS = (UNDECIDED, FITS_NEITHER, MALFORMED)
ANOMALY_KINDS = (RATES_DISAGREE, ERRORS_UNSUMMED, UNDECIDED, FITS_NEITHER, MALFORMED)


class Cell(msgspec.Struct, kw_only=True):
    """One leaf as ultra counts it (names as the file spells them; the shell folds them)."""

    model: str
    prompt_type: str
    tool_success_rate: float | None  # None: not placed (version 2.0)
    difficulty: str
    task_type: str
    path: str  # where in the file: models/<m>/by_prompt_type/<p>/...
    # what the leaf's `success` counted: "full", "full+partial", "no_partial" (both readings
    # agree: no partial success), or "explicit" (no `success`: full and partial given)
    counting: str
    full_success: int
    partial_success: int
    failure: int
    tests_with_assistance: int = 0
    errors: dict[str, int] = {}
    sums: dict[str, float] = {}  # avg × total, for the averages the leaf has (AVERAGES)
    anomaly: str = ""

    @property
    def total(self) -> int:
        return self.full_success + self.partial_success + self.failure


class Reading(msgspec.Struct, kw_only=True):
    sha256: str
    version: str
    last_updated: str
    cells: list[Cell]
    anomalies: dict[str, list[str]]  # kind -> leaf paths
    disagreements: list[str]  # the file's own aggregates against its leaves
    notes: list[str]
    empty_leaves: int = 0  # leaves with no tests (nothing to import)


# ---- one leaf --------------------------------------------------------------------------


def _count(leaf: dict, *names: str) -> tuple[int | None, bool]:
    """The first present count among `names` (None if none); False if one is malformed or
    two spellings disagree."""
    found: int | None = None
    for name in names:
        if name in leaf and leaf[name] is not None:
            v = leaf[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or v != int(v):
                return None, False
            if found is not None and int(v) != found:
                return None, False
            found = int(v)
    return found, True


def _number(leaf: dict, name: str) -> float | None:
    v = leaf.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None  # absent, or NaN (the legacy system wrote NaN for 0/0)
    return float(v)


def _rates(leaf: dict) -> dict[str, float]:
    out = {}
    for name, key in (("success_rate", "s"), ("full_success_rate", "f"),
                      ("partial_success_rate", "p"), ("partial_rate", "p"),
                      ("failure_rate", "x"), ("weighted_success_score", "w")):
        v = _number(leaf, name)
        if v is not None and key not in out:
            out[key] = v
    return out


def _agrees(rates: dict[str, float], full: int, partial: int, failure: int) -> bool:
    t = full + partial + failure
    if not t:
        return True
    want = {"s": (full + partial) / t, "f": full / t, "p": partial / t, "x": failure / t,
            "w": (full + 0.5 * partial) / t}
    return all(abs(v - want[k]) <= TOLERANCE for k, v in rates.items())


def _rates_agree_with_success(rates: dict[str, float], success: int, total: int) -> bool:
    return "s" not in rates or not total or abs(rates["s"] - success / total) <= TOLERANCE


def _from_rate(rates: dict[str, float], key: str, total: int) -> int | None:
    """A count a rate gives, if the rate is a whole number of tests."""
    if key not in rates:
        return None
    x = rates[key] * total
    return round(x) if abs(x - round(x)) <= TOLERANCE * max(1, total) else None


def read_leaf(leaf: Any) -> tuple[tuple[int, int, int] | None, str, str]:
    """(full, partial, failure) or None (skipped), the counting, and an anomaly kind ('')."""
    if not isinstance(leaf, dict):
        return None, "", MALFORMED
    total, ok_t = _count(leaf, "total")
    success, ok_s = _count(leaf, "success", "successful")
    partial, ok_p = _count(leaf, "partial_success", "partial")
    full, ok_f = _count(leaf, "full_success")
    failed, ok_x = _count(leaf, "failed", "failure")
    if total is None or not (ok_t and ok_s and ok_p and ok_f and ok_x):
        return None, "", MALFORMED
    rates = _rates(leaf)
    if success is None:  # counted explicitly, or not at all
        if full is None or partial is None:
            return None, "", MALFORMED
        failure = total - full - partial if failed is None else failed
        if failure < 0 or full + partial + failure != total:
            return None, "", FITS_NEITHER
        kind = "" if _agrees(rates, full, partial, failure) else RATES_DISAGREE
        return (full, partial, failure), "explicit", kind
    fits: dict[str, tuple[int, int, int]] = {}
    for counting in ("full", "full+partial"):
        p = partial
        if counting == "full":
            if full is not None and full != success:
                continue
            f = success
            if p is None:
                p = _from_rate(rates, "p", total) if "p" in rates else (
                    total - success - failed if failed is not None else None)
            if p is None:
                continue
            x = total - success - p
        else:
            if p is None and full is not None:
                p = success - full
            if p is None:
                p = _from_rate(rates, "p", total) if "p" in rates else (
                    success - _from_rate(rates, "f", total) if _from_rate(rates, "f", total) is not None else None)
            if p is None:
                continue
            f, x = success - p, total - success
        if f < 0 or p < 0 or x < 0 or (failed is not None and failed != x) \
                or (full is not None and full != f):
            continue
        fits[counting] = (f, p, x)
    distinct = set(fits.values())
    if not distinct:
        return None, "", FITS_NEITHER
    if len(distinct) == 1:
        # both readings agree when there is no partial success: "no_partial"
        counting = "no_partial" if len(fits) == 2 else next(iter(fits))
        triple = next(iter(distinct))
        return triple, counting, "" if _agrees(rates, *triple) else RATES_DISAGREE
    agreeing = [c for c, t in fits.items() if _agrees(rates, *t)]
    if len(agreeing) == 1:
        return fits[agreeing[0]], agreeing[0], ""
    # The rates are off (their denominator is not `total`), but how they relate still says
    # what `success` counted: success_rate = full + partial rate, or = the full rate alone.
    s, f, p = rates.get("s"), rates.get("f"), rates.get("p")
    if s is not None and f is not None and p is not None and p > TOLERANCE:
        if abs(s - (f + p)) <= TOLERANCE and "full+partial" in fits:
            return fits["full+partial"], "full+partial", RATES_DISAGREE
        if abs(s - f) <= TOLERANCE and "full" in fits:
            return fits["full"], "full", RATES_DISAGREE
    return None, "", UNDECIDED


def _extras(leaf: dict, total: int) -> tuple[int, dict[str, int], dict[str, float], bool]:
    """Assisted tests, error counts, averages as sums; False if errors do not sum up."""
    assisted, _ = _count(leaf, "tests_with_assistance")
    errors: dict[str, int] = {}
    for c in ERROR_CATEGORIES:
        n, ok = _count(leaf, f"{c}_errors")
        if ok and n:
            errors[c] = n
    summed = True
    stated, ok = _count(leaf, "total_errors")
    if ok and stated is not None and stated != sum(errors.values()):
        summed = False
        if stated > sum(errors.values()):
            errors["other"] = errors.get("other", 0) + stated - sum(errors.values())
    sums = {}
    for name, to in AVERAGES.items():
        v = _number(leaf, name)
        if v is not None:
            sums[to] = v * total
    return min(assisted or 0, total), errors, sums, summed


# ---- the file --------------------------------------------------------------------------


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
    assisted, errors, sums, summed = _extras(leaf, total)
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
        stated, _ = _count(node, "total_tests")
        got = sum(c.total for c in mine)
        if stated is not None and stated != got:
            reading.disagreements.append(
                f"models/{model}/total_tests says {stated}, its leaves add up to {got}")
        prompts = node.get("by_prompt_type") if isinstance(node.get("by_prompt_type"), dict) else {}
        for prompt, pnode in prompts.items():
            summary = pnode.get("summary") if isinstance(pnode, dict) else None
            if isinstance(summary, dict):
                stated, _ = _count(summary, "total")
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
            stated, _ = _count(node, field)
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
        stated, _ = _count(summary, field)
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


__all__ = ["ALL", "ANOMALY_KINDS", "AVERAGES", "Cell", "ERRORS_UNSUMMED", "event_id",
           "FITS_NEITHER", "fold_names", "leaf_keys", "LEVELS", "MALFORMED", "METRICS",
           "RATES_DISAGREE", "read", "read_leaf", "Reading", "SKIPPING_KINDS", "TOLERANCE",
           "UNDECIDED", "V2_BREAKDOWNS"]
