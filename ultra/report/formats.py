"""Tables as text: an 80-column terminal table, Markdown, CSV and JSON (LaTeX:
ultra/report/latex.py).

One number format per column kind, the same in every text format; CSV and JSON carry the
unrounded values.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable
from typing import Any

import textwrap

import msgspec

from ultra.report.intervals import wilson
from ultra.report.source import Column, Table

WIDTH = 80
NAME_WIDTH = 20


def shorten(name: str, width: int) -> str:
    """`name` in at most `width` characters, keeping its end (a key or deployment suffix
    such as `-key1` or `-2` tells routes apart) and its start."""
    if len(name) <= width:
        return name
    tail = min(8, max(1, (width - 1) // 2))
    return name[: width - tail - 1] + "…" + name[-tail:]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _tokens(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


FORMATS: dict[str, Callable[[Any], str]] = {
    "text": str,
    "count": lambda x: f"{x:,}",
    "rate": _pct,
    "interval": lambda x: f"{100 * x[0]:.1f}–{100 * x[1]:.1f}",
    "score": lambda x: f"{x:.3f}",
    "mean": lambda x: f"{x:.1f}",
    "tokens": _tokens,
    "cost": lambda x: f"{x:,.2f}",
    "delta": lambda x: f"{100 * x:+.1f}",
    "p": lambda x: f"{x:.3f}",
    "number": lambda x: f"{x:g}",
    "figure": str,  # formatted by the caller, aligned right
}


def cell(column: Column, value: Any) -> str:
    if value is None:
        return "–"
    return FORMATS[column.kind](value)


SIMULATED_ALL = ("SIMULATED: every test in this table was answered by the simulator,"
                 " not by a model")
SIMULATED_COLUMN = Column("simulated", "simulated", "text")


def simulated_line(t: Table) -> str | None:
    """The marker line of a table whose every test was simulated."""
    return SIMULATED_ALL if t.simulated_state() == "all" else None


def simulated_cell(counts: list[int]) -> str:
    """A row's mark in a table that mixes simulated and real tests."""
    sim, n = counts
    return "yes" if sim and sim == n else "no" if not sim else f"{sim} of {n}"


def with_simulated_column(t: Table) -> tuple[list[Column], list[list[Any]]]:
    """The table's columns and rows, with a `simulated` column when it mixes simulated and
    real tests (a table wholly simulated says so in one line instead)."""
    if t.simulated_state() != "mixed":
        return list(t.columns), [list(r) for r in t.rows]
    return ([*t.columns, SIMULATED_COLUMN],
            [[*r, simulated_cell(c)] for r, c in zip(t.rows, t.simulated)])


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|#~!"})


def csv_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text that starts with `=`, `+`, `-`, `@`
    (or a tab or carriage return) gets a leading `'`, as OWASP advises and spreadsheet
    tools show as text. Numbers are left as they are (-0.05 is a number, not a formula)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def md_escape(text: str) -> str:
    """Text for Markdown: HTML markup escaped (a name `<script>` stays text when the
    Markdown is rendered to HTML), and Markdown's own marks backslash-escaped."""
    return html.escape(str(text), quote=False).translate(_MD_SPECIAL)


def plain(text: str) -> str:
    """Text for a terminal: control characters (escape sequences in a name) shown as `?`."""
    return "".join("?" if (ord(ch) < 32 or 127 <= ord(ch) < 160) else ch for ch in str(text))


SMALL_N = 30  # a rate of fewer tests shows its n in the text formats
SMALL_N_NOTE = ("(n): a rate of fewer than 30 tests shows its n; --intervals shows every"
                " rate's 95 % interval and n")


def rate_stats(t: Table, i: int, key: str) -> tuple[int, int, float, float] | None:
    """(successes, n, low, high) behind row `i`'s rate `key`: the 95 % Wilson interval, or
    the interval the table gives (a mean of rates); None if the cell is no counted rate."""
    if i >= len(t.counts) or key not in t.counts[i]:
        return None
    c = t.counts[i][key]
    if len(c) == 4:
        return c[0], c[1], c[2], c[3]
    k, n = c
    lo, hi = wilson(k, n)
    return k, n, lo, hi


def text_cells(t: Table, columns: list[Column], rows: list[list[Any]],
               intervals: bool = False) -> tuple[list[list[str]], bool]:
    """Each cell as the terminal and Markdown show it: a rate with its n where it holds
    fewer than 30 tests (every rate, with its interval, on `intervals`). Also: whether a
    small n was shown."""
    small = False
    out = []
    for i, row in enumerate(rows):
        line = []
        for c, v in zip(columns, row):
            text = cell(c, v)
            stats = rate_stats(t, i, c.key) if c.kind == "rate" and v is not None else None
            if stats is not None:
                _, n, lo, hi = stats
                if intervals:
                    text += f" [{FORMATS['interval']((lo, hi))}] ({n})"
                elif n < SMALL_N:
                    text += f" ({n})"
                    small = True
            line.append(text)
        out.append(line)
    return out, small


def terminal_width() -> int:
    """The terminal's width (`COLUMNS` when set; 80 for a pipe), at least 40."""
    import shutil

    return max(40, shutil.get_terminal_size((WIDTH, 24)).columns)


def _layout(cols: list[Column], cells: list[list[str]], width: int,
            whole_names: bool) -> list[tuple[list[int], list[int]]]:
    """(column indices, widths) of each block a table is drawn in, one space between
    columns. Numbers keep their width and headers wrap only between words. A table too wide
    for `width`: names are shortened (never below 8 columns), or, with `whole_names`, the
    columns after the leading names continue in further blocks that repeat the names
    (names shortened only when one whole name and one column cannot fit)."""
    content = [max([len(r[j]) for r in cells] + [1]) for j in range(len(cols))]
    words = [max([len(w) for w in c.title.split()] + [1]) for c in cols]
    need = [max(n, w) for n, w in zip(content, words)]
    every = list(range(len(cols)))

    def span(js: list[int], ws: list[int]) -> int:
        return sum(ws[j] for j in js) + len(js) - 1

    if span(every, need) <= width:
        return [(every, need)]
    text = [j for j in every if cols[j].kind == "text"]
    keys = every[:next((j for j in every if cols[j].kind != "text"), len(every))]
    rest = [j for j in every if j not in keys]

    def shrink(names: list[int], others: list[int]) -> list[int]:
        widths = list(need)
        spare = width - span(others, need) - len(names) if others else width - len(names) + 1
        for j in names:  # names give way last, never below 8 columns nor a header word
            widths[j] = min(need[j], max(8, words[j], spare // max(1, len(names))))
        return widths

    if not whole_names or not rest:
        return [(every, shrink(text, [j for j in every if j not in text]))]
    widest = max(need[j] for j in rest)
    widths = need if span(keys, need) + 1 + widest <= width \
        else shrink(keys, [max(rest, key=need.__getitem__)])
    blocks: list[tuple[list[int], list[int]]] = []
    block: list[int] = []
    for j in rest:
        if block and span(keys + block + [j], widths) > width:
            blocks.append((keys + block, widths))
            block = []
        block.append(j)
    blocks.append((keys + block, widths))
    return blocks


def to_terminal(tables: list[Table], width: int = WIDTH, intervals: bool = False,
                provenance: Any = None, whole_names: bool = False) -> str:
    """Plain tables that fit `width` columns (detail columns are left out); see `_layout`
    for a table wider than that."""
    out: list[str] = []
    for t in tables:
        all_cols, all_rows = with_simulated_column(t)
        keep = [j for j, c in enumerate(all_cols) if not c.detail]
        cols = [all_cols[j] for j in keep]
        texts, small = text_cells(t, all_cols, all_rows, intervals)
        cells = [[plain(row[j]) if all_cols[j].kind == "text" else text[j]
                  for j in keep] for row, text in zip(all_rows, texts)]
        out += textwrap.wrap(plain(t.title), width) or [""]
        if simulated_line(t):
            out += textwrap.wrap(simulated_line(t), width)  # type: ignore[arg-type]
        for b, (js, widths) in enumerate(_layout(cols, cells, width, whole_names)):
            if b:
                out.append("")
            heads = [textwrap.wrap(cols[j].title, widths[j], break_long_words=False,
                                   break_on_hyphens=False) or [""] for j in js]
            depth = max(len(h) for h in heads)
            for line in range(depth):
                parts = []
                for j, h in zip(js, heads):
                    word = h[line - (depth - len(h))] if line >= depth - len(h) else ""
                    parts.append(word.ljust(widths[j]) if cols[j].kind == "text"
                                 else word.rjust(widths[j]))
                out.append(" ".join(parts).rstrip())
            out.append(" ".join("─" * widths[j] for j in js))
            for row in cells:
                out.append(" ".join(
                    shorten(row[j], widths[j]).ljust(widths[j]) if cols[j].kind == "text"
                    else row[j].rjust(widths[j]) for j in js).rstrip())
        for note in [*t.notes, *([SMALL_N_NOTE] if small else [])]:
            out += textwrap.wrap(note, width, initial_indent="  ", subsequent_indent="    ")
        out.append("")
    if provenance is not None:
        from ultra.report.provenance import lines

        out.append("Made from")
        for line in lines(provenance):
            out += textwrap.wrap(plain(line), width, initial_indent="  ", subsequent_indent="    ")
        out.append("")
    return "\n".join(out)


def to_markdown(tables: list[Table], intervals: bool = False, provenance: Any = None) -> str:
    parts = []
    for t in tables:
        lines = [f"## {md_escape(t.title)}", ""]
        if simulated_line(t):
            lines += [f"**{simulated_line(t)}**", ""]
        columns, rows = with_simulated_column(t)
        lines.append("| " + " | ".join(md_escape(c.title) for c in columns) + " |")
        lines.append("|" + "|".join("---" if c.kind == "text" else "---:" for c in columns) + "|")
        texts, small = text_cells(t, columns, rows, intervals)
        for row, text in zip(rows, texts):
            lines.append("| " + " | ".join(md_escape(x) if c.kind == "text"
                                           else x.replace("|", "\\|")
                                           for c, x in zip(columns, text)) + " |")
        lines.append("")
        lines += [f"- {md_escape(n)}" for n in [*t.notes, *([SMALL_N_NOTE] if small else [])]]
        parts.append("\n".join(lines) + "\n")
    if provenance is not None:
        from ultra.report.provenance import lines as facts

        parts.append("\n".join(["### Made from", "", *(f"- {md_escape(f)}" for f in facts(provenance))])
                     + "\n")
    return "\n".join(parts)


def to_csv(tables: list[Table], provenance: Any = None) -> str:
    """One CSV block per table (a `# title` line between blocks); intervals as two columns."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    for i, t in enumerate(tables):
        if len(tables) > 1:
            if i:
                out.write("\n")
            out.write(f"# {csv_safe(t.name)}" + (f" [{csv_safe(t.condition)}]" if t.condition
                                                  else "") + "\n")
        header = []
        for c in t.columns:
            header += [f"{c.key}_low", f"{c.key}_high"] if c.kind == "interval" else [c.key]
            if c.kind == "rate" and t.counts:  # every rate with its n and 95 % interval
                header += [f"{c.key}_n", f"{c.key}_ci_low", f"{c.key}_ci_high"]
        if t.simulated:
            header.append("simulated_share")  # of the row's tests, answered by the simulator
        w.writerow([csv_safe(h) for h in header])
        for i, row in enumerate(t.rows):
            flat: list[Any] = []
            for c, v in zip(t.columns, row):
                if c.kind == "interval":
                    flat += list(v) if v is not None else ["", ""]
                else:
                    flat.append("" if v is None else csv_safe(v))
                if c.kind == "rate" and t.counts:
                    stats = rate_stats(t, i, c.key) if v is not None else None
                    flat += list(stats[1:]) if stats is not None else ["", "", ""]
            if t.simulated:
                sim, n = t.simulated[i]
                flat.append(sim / n if n else "")
            w.writerow(flat)
    if provenance is not None:  # after the tables: a reader of the first block is unaffected
        from ultra.report.provenance import rows

        out.write("\n# provenance\n")
        w.writerow(["key", "value"])
        for key, value in rows(provenance):
            w.writerow([csv_safe(key), csv_safe(value)])
    return out.getvalue()


def csv_file_name(t: Table) -> str:
    """The file a table goes to in a directory of CSV files: its name, and its condition's
    label when the selection holds several (`overview-max_turns=4.csv`)."""
    raw = t.name + (f"-{t.condition}" if t.condition else "")
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._=-") else "-"
                   for ch in raw) + ".csv"


def csv_files(tables: list[Table], provenance: Any = None) -> list[tuple[str, str]]:
    """(file name, CSV) for each table, each file one plain table (no comment lines), and
    `provenance.csv` (key, value) for what they were made from."""
    out = [(csv_file_name(t), to_csv([t])) for t in tables]
    if provenance is not None:
        from ultra.report.provenance import rows

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["key", "value"])
        for key, value in rows(provenance):
            w.writerow([csv_safe(key), csv_safe(value)])
        out.append(("provenance.csv", buf.getvalue()))
    return out


def _row_info(t: Table, i: int) -> dict[str, Any]:
    """What stands behind row `i`: its tests, how many were simulated, and every rate's
    n, successes and 95 % interval."""
    info: dict[str, Any] = {}
    if i < len(t.simulated):
        info["tests"], info["simulated_tests"] = t.simulated[i][1], t.simulated[i][0]
    cells = {}
    for c, v in zip(t.columns, t.rows[i]):
        stats = rate_stats(t, i, c.key) if c.kind == "rate" and v is not None else None
        if stats is not None:
            k, n, lo, hi = stats
            cells[c.key] = {"n": n, "k": k, "ci_low": lo, "ci_high": hi}
    info["cells"] = cells
    return info


def to_json(tables: list[Table], selection: Any = None, provenance: Any = None) -> str:
    doc = {
        "selection": msgspec.to_builtins(selection) if selection is not None else None,
        "provenance": msgspec.to_builtins(provenance) if provenance is not None else None,
        "tables": [
            {
                "name": t.name,
                "title": t.title,
                "condition": t.condition or None,  # set when the selection holds several
                "columns": [{"key": c.key, "title": c.title, "kind": c.kind} for c in t.columns],
                "rows": [dict(zip((c.key for c in t.columns), row)) for row in t.rows],
                "notes": t.notes,
                # whether the simulator answered: the table's tests, and each row's
                "simulated": {"state": t.simulated_state(),
                              "tests": sum(c[0] for c in t.simulated),
                              "of": sum(c[1] for c in t.simulated)},
                "row_info": [_row_info(t, i) for i in range(len(t.rows))],
            }
            for t in tables
        ],
    }
    return msgspec.json.format(msgspec.json.encode(doc), indent=2).decode() + "\n"


__all__ = ["cell", "csv_file_name", "csv_files", "csv_safe", "FORMATS",
           "md_escape", "NAME_WIDTH", "plain", "rate_stats", "shorten", "SIMULATED_ALL",
           "simulated_cell", "SIMULATED_COLUMN", "simulated_line", "SMALL_N", "SMALL_N_NOTE",
           "terminal_width", "text_cells", "to_csv", "to_json", "to_markdown",
           "to_terminal", "WIDTH", "with_simulated_column"]
