"""The shell of `ultra report`: bring results.db up to date, read it, render the tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
    from ultra.projecting import update_results
    from ultra.store import EventLog, is_server_url

    if not is_server_url(db) and not Path(db).exists():
        return  # a results.db on its own (copied from elsewhere) is read as it is
    with EventLog.open(db, create=False) as log:
        update_results(log, results, log.last_seq())


def open_results(path: Path) -> sqlite3.Connection:
    from ultra.projecting import read_results_meta

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


def tables_for(conn: sqlite3.Connection, sel: Selection, info: dict[str, ModelInfo],
               names: list[str], compare: tuple[str, str] | None) -> list[Table]:
    src = Source(conn, sel, info)
    if compare is not None:
        from ultra.report.tables import mark_simulated

        return [mark_simulated(compare_runs(src, *compare), src.simulated_by_model(list(compare)))]
    tables = build(src, names)
    if not tables:
        raise UserError("no table has data for this selection")
    return tables


def render(tables: list[Table], fmt: str, sel: Selection, *, source: str,
           intervals: bool = False) -> str:
    if fmt == "table":
        return formats.to_terminal(tables, intervals=intervals)
    if fmt == "markdown":
        return formats.to_markdown(tables, intervals=intervals)
    if fmt == "csv":
        return formats.to_csv(tables)
    if fmt == "json":
        return formats.to_json(tables, sel)
    from ultra.report.page import to_html

    return to_html(tables, source=source)


def make_report(*, db: Path | str, out: Path, results: Path | None, config: Path | None,
                selection: Selection, tables: list[str], fmt: str,
                compare: tuple[str, str] | None, intervals: bool = False) -> str:
    from ultra.projecting import results_path

    path = results_path(out, results)
    refresh(db, path)
    info = model_info(config)
    conn = open_results(path)
    try:
        built = tables_for(conn, selection, info, tables, compare)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path}: unreadable ({exc}); `ultra project --rebuild` rebuilds it") from None
    finally:
        conn.close()
    return render(built, fmt, selection, source=str(path), intervals=intervals)
