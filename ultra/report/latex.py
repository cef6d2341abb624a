"""Tables as LaTeX: booktabs tables, one per report table, with the same number format
per column kind as the text formats (ultra/report/formats.py)."""

from __future__ import annotations

from typing import Any

from ultra.report.formats import SMALL_N, cell, plain, rate_stats, simulated_line, with_simulated_column
from ultra.report.source import Column, Table

_LATEX_SPECIAL = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "–": "--",
})


def latex_escape(text: Any) -> str:
    """Text for LaTeX: its special characters as the commands that print them (a name
    `a_b&c` stays text), control characters as `?`."""
    return plain(str(text)).translate(_LATEX_SPECIAL)


def _latex_interval(lo: float, hi: float) -> str:
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def _latex_label(t: Table) -> str:
    raw = t.name + (f"-{t.condition}" if t.condition else "")
    return "tab:" + "".join(ch if ch.isascii() and ch.isalnum() else "-" for ch in raw.lower())


def _latex_cells(t: Table, columns: list[Column], rows: list[list[Any]]) -> list[list[str]]:
    """Each cell for LaTeX: every rate with its 95 % interval `[lo, hi]` (unless the table
    has the interval as a column of its own beside it), and its n under 30 tests."""
    keys = {c.key for c in columns}
    out = []
    for i, row in enumerate(rows):
        line = []
        for c, v in zip(columns, row):
            if c.kind == "text":
                line.append(latex_escape("" if v is None else v))
                continue
            if v is None:
                line.append("--")
                continue
            if c.kind == "interval":
                line.append("{" + _latex_interval(*v) + "}")
                continue
            text = latex_escape(cell(c, v))
            stats = rate_stats(t, i, c.key) if c.kind == "rate" else None
            if stats is not None:
                _, n, lo, hi = stats
                if c.key.removesuffix("_rate") + "_ci" not in keys:
                    text += " {" + _latex_interval(lo, hi) + "}"
                if n < SMALL_N:
                    text += f" ({n})"
            line.append(text)
        out.append(line)
    return out


def to_latex(tables: list[Table], provenance: Any = None) -> str:
    """One booktabs `table` per report table (detail columns left out, as on the terminal):
    `\\toprule`, the header, `\\midrule`, the rows, `\\bottomrule`; every rate with its 95 %
    interval `[lo, hi]`; the notes under it; what it was made from as comments."""
    out = ["% ultra report: tables for LaTeX; needs \\usepackage{booktabs}", ""]
    for t in tables:
        all_cols, all_rows = with_simulated_column(t)
        keep = [j for j, c in enumerate(all_cols) if not c.detail]
        cols = [all_cols[j] for j in keep]
        rows = [[r[j] for j in keep] for r in all_rows]
        body = _latex_cells(t, cols, rows)
        spec = "".join("l" if c.kind == "text" else "r" for c in cols)
        out += ["\\begin{table}[htbp]", "\\centering", "\\small",
                f"\\caption{{{latex_escape(t.title)}}}", f"\\label{{{_latex_label(t)}}}"]
        if simulated_line(t):
            out.append(f"\\textbf{{{latex_escape(simulated_line(t))}}}\\par\\smallskip")
        out += [f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                " & ".join(latex_escape(c.title) for c in cols) + " \\\\", "\\midrule"]
        out += [" & ".join(line) + " \\\\" for line in body]
        out += ["\\bottomrule", "\\end{tabular}"]
        notes = [*t.notes, "rates in %, each with its 95 % interval [low, high];"
                 " (n): a rate of fewer than 30 tests"]
        out += ["\\par\\smallskip", "\\begin{minipage}{\\linewidth}\\footnotesize"]
        out += [latex_escape(n) + "\\par" for n in notes]
        out += ["\\end{minipage}", "\\end{table}", ""]
    if provenance is not None:
        from ultra.report.provenance import lines

        out.append("% Made from")
        out += [f"%   {plain(line)}" for line in lines(provenance)]
        out.append("")
    return "\n".join(out)


__all__ = ["latex_escape", "to_latex"]
