"""What the report tables read: results.db's `cells` (the tests' sums per cell and run)
through `Source`, chosen by a `Selection`, summed into `Counts` (by the cell spec's names,
projections/results_db.py), and the plain-data `Table` the formats render."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import msgspec

from projections.results_db import CELL_SUMS, legacy_as_cells_sql
from ultra.errors import UserError
from ultra.events import ERROR_CATEGORIES
from ultra.naming import canonical_model

Kind = Literal["text", "count", "rate", "interval", "score", "mean", "tokens", "cost", "delta",
               "p", "number", "figure"]

FLAWED = "flawed_"  # the prompt types of the flawed-plan conditions begin so


class Column(msgspec.Struct, frozen=True):
    key: str
    title: str
    kind: Kind
    detail: bool = False  # left out of the 80-column terminal table only


class Table(msgspec.Struct):
    name: str
    title: str
    columns: list[Column]
    rows: list[list[Any]]
    notes: list[str] = []
    condition: str = ""  # the condition's label, when the selection holds several
    # per row: [simulated tests, tests] behind it (empty: the table does not say)
    simulated: list[list[int]] = []
    # per row: rate column key -> [successes, tests] behind the rate (a mean of rates has
    # [tests, tests, low, high]: its interval is given, not derived), so every format can
    # give each rate its n and 95 % interval
    counts: list[dict[str, list[Any]]] = []

    def simulated_state(self) -> str:
        """"all", "none" or "mixed": whether the simulator answered the table's tests."""
        sim = sum(r[0] for r in self.simulated)
        n = sum(r[1] for r in self.simulated)
        return "none" if sim == 0 else "all" if sim == n else "mixed"


class Selection(msgspec.Struct, kw_only=True):
    """Which counted tests a report covers (the selection flags of `ultra run`, and more)."""

    models: list[str] | None = None
    prompt_types: list[str] | None = None
    difficulties: list[str] | None = None
    task_types: list[str] | None = None
    rates: list[float] | None = None
    run: str | None = None
    exclude_timeouts: bool = False
    include_legacy: bool = False  # legacy sources' tests added into the models' own numbers
    condition: str | None = None  # only this condition (its id or label: `max_turns=4`)
    unpaired: bool = False  # --compare without pairing tests (its samples as they are)


class ModelInfo(msgspec.Struct, kw_only=True, frozen=True):
    """What the config knows of a model that the events do not: its family, its size and
    its prices (per million tokens)."""

    family: str | None = None
    params_b: float | None = None
    input_price: float | None = None
    output_price: float | None = None


class Counts(msgspec.Struct):
    """Sums over a group of counted tests."""

    n: int = 0
    success: int = 0
    full: int = 0
    partial: int = 0
    failure: int = 0
    final_score: float = 0.0
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[int] = msgspec.field(default_factory=lambda: [0] * len(ERROR_CATEGORIES))
    truncated: int = 0  # tests with an answer cut off at the token limit

    @property
    def success_rate(self) -> float | None:
        return self.success / self.n if self.n else None


# Reports read results.db's `cells` (the tests' sums per cell and run), not every test.
_SUMS = ", ".join(f"SUM({c})" for c in CELL_SUMS)
_TIMEOUT_FAILURE = "timeout_failure = 1"


_AT = {name: i for i, name in enumerate(CELL_SUMS)}  # the cell spec's sums, by name
_FIELD = {"full_success": "full", "partial_success": "partial"}  # Counts' shorter names
_PLAIN = tuple((_FIELD.get(n, n), i) for n, i in _AT.items() if not n.endswith("_errors"))
_ERRORS = tuple(_AT[f"{c}_errors"] for c in ERROR_CATEGORIES)


def _counts(row: Sequence[Any]) -> Counts:
    """A row of `SUM(...)`s over `cells`, in CELL_SUMS order, read by name."""
    c = Counts(**{name: row[i] for name, i in _PLAIN}, errors=[row[i] for i in _ERRORS])
    c.final_score = c.final_score or 0.0
    return c


class Source:
    """results.db under a selection: checked once, queried per table."""

    def __init__(self, conn: sqlite3.Connection, sel: Selection,
                 info: dict[str, ModelInfo] | None = None) -> None:
        self.conn = conn
        self.sel = sel
        self.info = info or {}
        # Each legacy source is a condition of its own (run_id `legacy:<source>`, models
        # labelled) unless --include-legacy; without legacy cells, `cells` as it is.
        self.legacy_sources = [r[0] for r in conn.execute(
            "SELECT source FROM legacy_imports WHERE cells > 0 ORDER BY source")]
        self.table = legacy_as_cells_sql(sel.include_legacy) if self.legacy_sources else "cells"
        self.model_column = "base_model" if self.legacy_sources else "model"
        known = [r[0] for r in conn.execute(
            f"SELECT DISTINCT {self.model_column} FROM {self.table} ORDER BY 1")]
        if not known:
            raise UserError("results.db holds no counted tests yet (run `ultra run`, or "
                            "`ultra project` over a log that has some)")
        self.models: list[str] | None = None
        if sel.models:
            lookup = {m.lower(): m for m in known}
            aliases = dict(conn.execute("SELECT alias, canonical FROM aliases").fetchall())
            chosen = []
            for name in sel.models:
                m = lookup.get(canonical_model(name, aliases).lower())
                if m is None:
                    raise UserError(f"unknown model {name!r}: results.db has {', '.join(known)}")
                chosen.append(m)
            self.models = list(dict.fromkeys(chosen))
        if sel.run is not None:
            self._check_run(sel.run)
        self.labels = dict(conn.execute("SELECT condition, label FROM conditions"))
        self.condition: str | None = None
        if sel.condition is not None:
            by_label = {label: c for c, label in self.labels.items()}
            self.condition = sel.condition if sel.condition in self.labels else \
                by_label.get(sel.condition)
            if self.condition is None:
                raise UserError(f"unknown condition {sel.condition!r}: results.db has "
                                + "; ".join(sorted(self.labels.values())))
        where, params = self._where(sel.run)
        self.where, self.params = where, params
        n = conn.execute(f"SELECT COALESCE(SUM(n), 0) FROM {self.table} WHERE {where}", params).fetchone()[0]
        if n == 0:
            raise UserError("no counted tests match this selection")
        self.timeouts_excluded = 0
        # the conditions of ultra's own tests in the selection (legacy sources are rows of
        # their own): (id, label, tests)
        self.conditions: list[tuple[str, str, int]] = [
            (c, self.labels.get(c, c), n) for c, n in conn.execute(
                f"SELECT condition, SUM(n) FROM {self.table} WHERE {where} AND condition NOT LIKE"
                " 'legacy:%' GROUP BY condition ORDER BY condition = 'default' DESC, condition",
                params)]
        if sel.exclude_timeouts:
            base, base_params = self._where(sel.run, with_timeouts=True)
            self.timeouts_excluded = conn.execute(
                f"SELECT COALESCE(SUM(n), 0) FROM {self.table} WHERE {base} AND {_TIMEOUT_FAILURE}",
                base_params).fetchone()[0]

    def _check_run(self, run: str) -> None:
        if run.startswith("legacy:"):
            if run[len("legacy:"):] not in self.legacy_sources:
                raise UserError(f"unknown legacy source {run[len('legacy:'):]!r}: results.db has"
                                f" {', '.join(self.legacy_sources) or 'none'}")
            return
        found = self.conn.execute(
            "SELECT 1 FROM tests WHERE run_id = ? UNION SELECT 1 FROM errored WHERE run_id = ?"
            " UNION SELECT 1 FROM runs WHERE run_id = ? LIMIT 1", (run, run, run)).fetchone()
        if found is None:
            raise UserError(f"unknown run id {run!r}: results.db has no such run")

    def _where(self, run: str | None, *, with_timeouts: bool = False,
               table: str = "cells") -> tuple[str, list[Any]]:
        sel = self.sel
        parts: list[str] = ["1 = 1"]
        params: list[Any] = []

        def among(column: str, values: Iterable[Any] | None) -> None:
            if values is not None:
                values = list(values)
                parts.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)

        among(getattr(self, "model_column", "model") if table == "cells" else "model", self.models)
        prompts = sel.prompt_types
        if prompts is not None and "all_with_flawed" not in prompts:
            plain = [p for p in prompts if p != "all"]
            if "all" in prompts:
                parts.append(f"(prompt_type NOT LIKE '{FLAWED}%'"
                             + (f" OR prompt_type IN ({', '.join('?' * len(plain))}))" if plain else ")"))
                params.extend(plain)
            else:
                among("prompt_type", plain)
        among("difficulty", sel.difficulties)
        among("task_type", sel.task_types)
        if sel.rates is not None:
            among("ROUND(tool_success_rate, 4)", [round(r, 4) for r in sel.rates])
        if run is not None:
            parts.append("run_id = ?")
            params.append(run)
        if getattr(self, "condition", None) is not None:
            parts.append("(condition = ? OR condition LIKE 'legacy:%')" if table == "cells"
                         else "condition = ?")
            params.append(self.condition)
        if sel.exclude_timeouts and not with_timeouts and table == "cells":
            parts.append("timeout_failure = 0")
        return " AND ".join(parts), params

    def grouped(self, *dims: str, run: str | None = None,
                light: bool = False) -> dict[tuple[Any, ...], Counts]:
        """Counts per (model, *dims), models in name order; `light`: tests and successes only
        (what a pivot of success rates needs, at a fraction of the cost)."""
        if run is None:
            where, params = self.where, self.params
        else:
            where, params = self._where(run)
        keys = ", ".join(("model", *dims))
        sums = "SUM(n), SUM(success)" if light else _SUMS
        rows = self.conn.execute(
            f"SELECT {keys}, {sums} FROM {self.table} WHERE {where} GROUP BY {keys} ORDER BY {keys}",
            params).fetchall()
        width = 1 + len(dims)
        if light:
            return {tuple(r[:width]): Counts(n=r[width], success=r[width + 1]) for r in rows}
        return {tuple(r[:width]): _counts(r[width:]) for r in rows}

    def errored(self, run: str | None = None) -> dict[str, int]:
        where, params = self._where(run if run is not None else self.sel.run, table="errored")
        rows = self.conn.execute(
            f"SELECT model, COUNT(*) FROM errored WHERE {where} GROUP BY model", params).fetchall()
        return dict(rows)

    def where_tests(self) -> tuple[str, list[Any]]:
        """The selection over `tests` rows (ultra's own tests; legacy cells have none)."""
        where, params = self._where(self.sel.run, table="tests")
        if self.sel.exclude_timeouts:
            where += " AND NOT (outcome = 'failure' AND error_category IS 'timeout')"
        return where, params

    def check_run(self, run: str) -> None:
        self._check_run(run)

    def simulated_by_model(self, runs: Sequence[str] | None = None) -> dict[str, list[int]]:
        """model (as the rows name it) -> [simulated tests, tests] under the selection (or
        the selection in `runs`)."""
        out: dict[str, list[int]] = {}
        for run in (runs or [None]):
            where, params = (self.where, self.params) if run is None else self._where(run)
            for model, n, sim in self.conn.execute(
                    f"SELECT model, SUM(n), SUM(simulated * n) FROM {self.table} WHERE {where}"
                    " GROUP BY model", params):
                acc = out.setdefault(unlabelled(model) if runs else model, [0, 0])
                acc[0] += sim or 0
                acc[1] += n or 0
        return out

    def notes(self) -> list[str]:
        out = []
        if self.sel.exclude_timeouts:
            out.append(f"--exclude-timeouts: {self.timeouts_excluded} tests that failed by"
                       " timeout are left out of every denominator")
        if self.legacy_sources:
            names = ", ".join(f"legacy:{s}" for s in self.legacy_sources)
            out.append(f"legacy sources ({names}) added into the models' numbers (--include-legacy)"
                       if self.sel.include_legacy else
                       f"legacy sources ({names}): conditions of their own, rows '<model>"
                       " [legacy:<source>]'; never added into ultra's own tests (--include-legacy"
                       " adds them); their cells have no tokens")
        return out


def unlabelled(model: str) -> str:
    """A model's name without the `[legacy:<source>]` label of a legacy condition."""
    i = model.find(" [legacy:")
    return model[:i] if i >= 0 and model.endswith("]") else model


__all__ = ["Column", "FLAWED", "unlabelled", "Counts", "Kind", "ModelInfo", "Selection", "Source", "Table"]
