"""The shell of `ultra import-legacy`: read a legacy master_database.json, turn it into
events (one `legacy.imported`, one `legacy.cell` per leaf), append them, and say what was
found. The reading itself is `ultra.legacy` (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import msgspec

from ultra import events as ev
from ultra import legacy
from ultra.errors import UserError

FIRST_PATHS = 3  # leaf paths listed per anomaly kind
TEST_MODEL = re.compile(r"(^|[-_])(test|dummy|fake|mock)([-_]|$)", re.IGNORECASE)
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Plan(msgspec.Struct, kw_only=True):
    """What an import appends, and what it found (for the report it prints)."""

    reading: legacy.Reading
    source: str
    imported: ev.LegacyImported
    cells: list[ev.LegacyCell]
    folded: dict[str, str]  # file's name -> canonical, where they differ
    excluded: dict[str, int]  # file's name -> tests dropped
    test_like: dict[str, int]  # names that look like test models, kept (tests)


def read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(512 * 2**20 + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror}); nothing imported") from None


def source_name(path: Path, source: str | None) -> str:
    name = source if source is not None else path.stem
    if not SOURCE_NAME.match(name or ""):
        raise UserError(f"--source {name!r}: a source name is letters, digits, '.', '_' or '-'"
                        " (at most 128), starting with a letter or digit")
    return name


def recorded_at(last_updated: str) -> str:
    """The events' `recorded_at`: the file's own `last_updated` in the log's UTC form (a
    time without a zone is taken as UTC), else the epoch. Never the clock: the same file
    imported on two machines gives the same events, so their logs merge (`ultra import`)."""
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(last_updated.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        when = dt.datetime(1970, 1, 1)
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def plan(path: Path, data: bytes, source: str, canonical: Callable[[str], str],
         exclude: list[str] | None = None) -> Plan:
    """The events of one import (nothing is stored here). They depend on the file, the
    source, the file's name and the models left out, nothing else (not the clock, not the
    log's aliases: `canonical` is the static naming, aliases apply when projecting), so
    importing the same file the same way anywhere gives the same events."""
    reading = legacy.read(data, what=str(path))
    dropped = {x.strip().lower() for x in exclude or [] if x.strip()}
    stamp = recorded_at(reading.last_updated)
    # another name or other models left out: another import of the source (the latest wins)
    import_id = legacy.event_id(source, reading.sha256, "\0".join([path.name, *sorted(dropped)]))
    cells: list[ev.LegacyCell] = []
    folded: dict[str, str] = {}
    excluded: dict[str, int] = {}
    test_like: dict[str, int] = {}
    for c in reading.cells:
        model = canonical(c.model)
        if c.model.lower() in dropped or model.lower() in dropped:
            excluded[c.model] = excluded.get(c.model, 0) + c.total
            continue
        if model != c.model:
            folded[c.model] = model
        if TEST_MODEL.search(model):
            test_like[model] = test_like.get(model, 0) + c.total
        cells.append(ev.LegacyCell(
            event_id=legacy.event_id(source, import_id, c.path), recorded_at=stamp,
            source=source, import_id=import_id, model=model, legacy_model=c.model,
            prompt_type=c.prompt_type, tool_success_rate=c.tool_success_rate,
            difficulty=c.difficulty, task_type=c.task_type, path=c.path[:4000],
            counting=c.counting, full_success=c.full_success, partial_success=c.partial_success,
            failure=c.failure, tests_with_assistance=c.tests_with_assistance,
            errors=c.errors, sums=c.sums, anomaly=c.anomaly))  # type: ignore[arg-type]
    skipped = sum(len(v) for k, v in reading.anomalies.items() if k in legacy.SKIPPING_KINDS)
    imported = ev.LegacyImported(
        event_id=import_id, recorded_at=stamp, source=source, sha256=reading.sha256,
        file_name=path.name[:4000],
        file_version=reading.version[:4000], last_updated=reading.last_updated[:4000],
        cells=len(cells), tests=sum(c.total for c in cells),
        models=len({c.model for c in cells}),
        anomalies={k: len(v) for k, v in reading.anomalies.items()}, skipped=skipped,
        excluded_models=sorted(excluded), notes=[n[:4000] for n in reading.notes])
    for e in (imported, *cells):  # what the log's readers would refuse is refused here
        try:
            ev.decode(ev.encode(e))
        except msgspec.ValidationError as exc:
            raise UserError(f"{path}: cannot record {type(e).__struct_config__.tag}"
                            f" ({exc}); nothing imported") from None
    return Plan(reading=reading, source=source, imported=imported, cells=cells, folded=folded,
                excluded=excluded, test_like=test_like)


def _n(x: int) -> str:
    return f"{x:,}"


def report(p: Plan, path: Path) -> list[str]:
    """The short table `ultra import-legacy` prints."""
    r, imp = p.reading, p.imported
    full = sum(c.full_success for c in p.cells)
    partial = sum(c.partial_success for c in p.cells)
    failure = sum(c.failure for c in p.cells)
    head = (f"legacy file {path} as source {p.source!r} (version {r.version or '?'},"
            f" last_updated {r.last_updated or '?'}, sha256 {r.sha256[:12]})")
    rows = [head,
            f"  {'cells imported':<20}{_n(imp.cells)}",
            f"  {'tests':<20}{_n(imp.tests)}" + (
                f" (full {_n(full)}, partial {_n(partial)}, failure {_n(failure)})" if imp.tests else ""),
            f"  {'models':<20}{_n(imp.models)}"]
    total_anomalies = sum(len(v) for v in r.anomalies.values())
    rows.append(f"  {'anomalies':<20}{_n(total_anomalies)}" + (
        f" ({_n(imp.skipped)} leaves skipped)" if imp.skipped else ""))
    for kind in legacy.ANOMALY_KINDS:
        paths = r.anomalies.get(kind)
        if not paths:
            continue
        how = "skipped" if kind in legacy.SKIPPING_KINDS else "imported as counted"
        more = f" (+{len(paths) - FIRST_PATHS} more)" if len(paths) > FIRST_PATHS else ""
        rows.append(f"    {kind:<18}{len(paths):>5}  {how}: {', '.join(paths[:FIRST_PATHS])}{more}")
    if r.empty_leaves:
        rows.append(f"  {'empty leaves':<20}{_n(r.empty_leaves)} (no tests: nothing to import)")
    if r.disagreements:
        rows.append(f"  {'file aggregates':<20}{len(r.disagreements)} disagree with its leaves"
                    " (the leaves are imported):")
        rows += [f"    {d}" for d in r.disagreements]
    else:
        rows.append(f"  {'file aggregates':<20}agree with its leaves")
    if p.folded:
        rows.append(f"  {'names folded':<20}" + ", ".join(f"{a} -> {b}" for a, b in sorted(p.folded.items())))
    if p.excluded:
        rows.append(f"  {'excluded':<20}" + ", ".join(
            f"{m} ({_n(n)} tests)" for m, n in sorted(p.excluded.items())))
    for m, n in sorted(p.test_like.items()):
        rows.append(f"  {'note':<20}{m} looks like a test model ({_n(n)} tests);"
                    f" --exclude-models {m} drops it")
    rows += [f"  {'note':<20}{n}" for n in r.notes]
    return rows


__all__ = ["FIRST_PATHS", "Plan", "plan", "read_file", "recorded_at", "report", "SOURCE_NAME",
           "source_name", "TEST_MODEL"]
