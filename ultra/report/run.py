"""The shell of `ultra report`: bring results.db up to date, read it, render the tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from projections import results_db as rdb
from ultra.errors import UserError
from ultra.report import formats
from ultra.report.tables import ModelInfo, Selection, Source, Table, build, compare as compare_runs


def model_info(config_path: Path | str | None) -> dict[str, ModelInfo]:
    """Family, size and prices of the models under their canonical names: from the config
    (default: the demo's), and from the bundled presets for models it does not name."""
    from ultra.config import load_config
    from ultra.naming import canonical_model

    info: dict[str, ModelInfo] = {}
    for source in ("presets", config_path):
        config, _ = load_config(source)
        info.update({
            canonical_model(name): ModelInfo(family=m.family, params_b=m.params_b,
                                             input_price=m.input_price,  # per million tokens
                                             output_price=m.output_price)
            for name, m in config.models.items()
        })
    return info


def refresh(db: Path | str, results: Path) -> None:
    """Fold the log's new events into results.db, when the log is here."""
    from ultra.projection.results import update_results
    from ultra.eventlog.store import EventLog
    from ultra.eventlog.locations import is_server_url

    if not is_server_url(db) and not Path(db).exists():
        return  # a results.db on its own (copied from elsewhere) is read as it is
    with EventLog.open(db, create=False) as log:
        update_results(log, results, log.last_seq())


def open_results(path: Path) -> sqlite3.Connection:
    from ultra.projection.results import read_results_meta

    if not path.exists():
        raise UserError(f"{path}: no results database (run `ultra run`, or `ultra project` "
                        "over an event log)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        meta = read_results_meta(conn)
    except sqlite3.Error as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None
    if meta is None:
        conn.close()
        raise UserError(f"{path}: not a results database (`ultra project --rebuild` makes one)")
    if meta.version != rdb.VERSION:
        conn.close()
        raise UserError(f"{path}: written by another version of ultra (layout {meta.version}, "
                        f"this one reads {rdb.VERSION}); `ultra project --rebuild` rebuilds it")
    return conn


def provenance_of(src: Source, path: Path, runs: list[str] | None = None):
    """What the report is made from: runs, selection, version, chain head, simulated share."""
    import msgspec

    from ultra import __version__
    from ultra.projection.results import read_results_meta
    from ultra.report.provenance import Provenance, runs_of

    meta = read_results_meta(src.conn)
    where, params = src._where(src.sel.run, table="tests")
    if runs:
        where = f"({where}) AND run_id IN ({', '.join('?' * len(runs))})"
        params = [*params, *runs]
    found = runs_of(src.conn, where, params)
    n = sum(c[1] for c in src.simulated_by_model().values())
    sim = sum(c[0] for c in src.simulated_by_model().values())
    return Provenance(
        conditions=[dict(condition=c, label=label, tests=n) for c, label, n in src.conditions],
        ultra_version=__version__, generated_at=meta.generated_at if meta else "",
        last_seq=meta.last_seq if meta else 0, chain_head=meta.chain_head if meta else "",
        results=str(path), selection=msgspec.to_builtins(src.sel), runs=found,
        tests=n, simulated_tests=sim, simulated_share=sim / n if n else None)


def tables_for(conn: sqlite3.Connection, sel: Selection, info: dict[str, ModelInfo],
               names: list[str], compare: tuple[str, str] | None) -> list[Table]:
    return tables_with_provenance(conn, sel, info, names, compare)[0]


def tables_with_provenance(conn: sqlite3.Connection, sel: Selection, info: dict[str, ModelInfo],
                           names: list[str], compare: tuple[str, str] | None,
                           source: Path | None = None) -> tuple[list[Table], Any]:
    """The tables, and what they were made from (for every format)."""
    src = Source(conn, sel, info)
    provenance = provenance_of(src, source or Path(""), list(compare) if compare else None)
    return _tables(src, names, compare), provenance


def _tables(src: Source, names: list[str], compare: tuple[str, str] | None) -> list[Table]:
    """One set of tables per condition in the selection (labelled with what sets it apart
    when there are several): no number adds tests of two conditions."""
    if compare is not None or len(src.conditions) <= 1:
        return _condition_tables(src, names, compare)
    import msgspec

    out: list[Table] = []
    for cid, label, _ in src.conditions:
        sub = Source(src.conn, msgspec.structs.replace(src.sel, condition=cid), src.info)
        try:
            built = _condition_tables(sub, names, None)
        except UserError:
            continue  # this condition has no data for these tables
        for t in built:
            t.condition = label
            t.title = f"{t.title} [{label}]"
        out += built
    if not out:
        raise UserError("no table has data for this selection")
    return out


def _condition_tables(src: Source, names: list[str], compare: tuple[str, str] | None) -> list[Table]:
    if compare is not None:
        from ultra.report.tables import compare_paired, mark_simulated

        if src.sel.unpaired or any(r.startswith("legacy:") for r in compare):
            t = compare_runs(src, *compare)
            if not t.title.endswith("unpaired"):
                t.title += ", unpaired"
        else:
            t = compare_paired(src, *compare, table=names[0] if len(names) == 1 else "overview")
        return [mark_simulated(t, src.simulated_by_model(list(compare)))]
    tables = build(src, names)
    if not tables:
        raise UserError("no table has data for this selection")
    return tables


def render(tables: list[Table], fmt: str, sel: Selection, *, source: str,
           intervals: bool = False, provenance=None) -> str:
    if fmt == "table":
        return formats.to_terminal(tables, formats.terminal_width(), intervals=intervals,
                                   provenance=provenance, whole_names=True)
    if fmt == "markdown":
        return formats.to_markdown(tables, intervals=intervals, provenance=provenance)
    if fmt == "csv":
        return formats.to_csv(tables, provenance=provenance)
    if fmt == "latex":
        from ultra.report.latex import to_latex

        return to_latex(tables, provenance=provenance)
    if fmt == "json":
        return formats.to_json(tables, sel, provenance=provenance)
    from ultra.report.page import to_html

    return to_html(tables, source=source, provenance=provenance)


def make_report(*, db: Path | str, out: Path, results: Path | None, config: Path | None,
                selection: Selection, tables: list[str], fmt: str,
                compare: tuple[str, str] | None, intervals: bool = False) -> str:
    built, provenance, path = make_tables(db=db, out=out, results=results, config=config,
                                          selection=selection, tables=tables, compare=compare)
    if fmt == "csv" and len(built) > 1:
        raise UserError(f"--format csv gives one table and this report has {len(built)}: name"
                        " one table (and --condition), or --output DIR for a file per table")
    return render(built, fmt, selection, source=str(path), intervals=intervals,
                  provenance=provenance)


def write_csv_dir(directory: Path, *, db: Path | str, out: Path, results: Path | None,
                  config: Path | None, selection: Selection, tables: list[str],
                  compare: tuple[str, str] | None) -> list[Path]:
    """A CSV file per table in `directory` (made if missing), and provenance.csv."""
    from ultra.projection.files import write_atomic

    built, provenance, _ = make_tables(db=db, out=out, results=results, config=config,
                                       selection=selection, tables=tables, compare=compare)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--output {directory}: not a directory (a report of several CSV"
                        " tables is written as a directory of files)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {directory}: cannot make the directory ({exc.strerror})") from None
    written = []
    for name, text in formats.csv_files(built, provenance):
        write_atomic(directory / name, text.encode())
        written.append(directory / name)
    return written


def make_tables(*, db: Path | str, out: Path, results: Path | None, config: Path | None,
                selection: Selection, tables: list[str],
                compare: tuple[str, str] | None) -> tuple[list[Table], Any, Path]:
    """The tables, what they were made from, and the results.db they were read from."""
    from ultra.projection.results import results_path

    path = results_path(out, results)
    refresh(db, path)
    info = model_info(config)
    conn = open_results(path)
    try:
        built, provenance = tables_with_provenance(conn, selection, info, tables, compare, path)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path}: unreadable ({exc}); `ultra project --rebuild` rebuilds it") from None
    finally:
        conn.close()
    return built, provenance, path


def list_runs(*, db: Path | str, out: Path, results: Path | None) -> list[Any]:
    """The runs of the log (results.db brought up to date first), in start order."""
    from ultra.projection.results import results_path
    from ultra.report.provenance import runs_of

    path = results_path(out, results)
    refresh(db, path)
    conn = open_results(path)
    try:
        return runs_of(conn)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path}: unreadable ({exc}); `ultra project --rebuild` rebuilds it") from None
    finally:
        conn.close()


__all__ = ["list_runs", "make_report", "make_tables", "model_info", "open_results",
           "provenance_of", "refresh", "render", "tables_for", "tables_with_provenance",
           "write_csv_dir"]
