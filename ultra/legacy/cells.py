"""The legacy file's cells and one leaf read the way it was written (see the package's
docstring for the rules)."""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ultra.events import ERROR_CATEGORIES, WORKFLOW_METRICS

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
METRICS = WORKFLOW_METRICS  # the suite's order
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


def count_of(leaf: dict, *names: str) -> tuple[int | None, bool]:
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
    total, ok_t = count_of(leaf, "total")
    success, ok_s = count_of(leaf, "success", "successful")
    partial, ok_p = count_of(leaf, "partial_success", "partial")
    full, ok_f = count_of(leaf, "full_success")
    failed, ok_x = count_of(leaf, "failed", "failure")
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


def extras_of(leaf: dict, total: int) -> tuple[int, dict[str, int], dict[str, float], bool]:
    """Assisted tests, error counts, averages as sums; False if errors do not sum up."""
    assisted, _ = count_of(leaf, "tests_with_assistance")
    errors: dict[str, int] = {}
    for c in ERROR_CATEGORIES:
        n, ok = count_of(leaf, f"{c}_errors")
        if ok and n:
            errors[c] = n
    summed = True
    stated, ok = count_of(leaf, "total_errors")
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


__all__ = ["ALL", "ANOMALY_KINDS", "AVERAGES", "Cell", "ERRORS_UNSUMMED", "FITS_NEITHER", "LEVELS", "MALFORMED", "METRICS", "RATES_DISAGREE", "Reading", "SKIPPING_KINDS", "TOLERANCE", "UNDECIDED", "V2_BREAKDOWNS", "count_of", "extras_of", "read_leaf"]
