"""The report as one self-contained HTML page: the tables and up to four charts, offline.

Charts come from plotly (its Python library writes the figure as JSON and inlines
plotly.js, about 4.6 MB, once): interactive (hover values, zoom, PNG export), well kept,
and with nothing fetched at view time, so the file works offline and can be mailed.
"""

from __future__ import annotations

import html
from typing import Any

from ultra.report.formats import cell, simulated_line, with_simulated_column
from ultra.report.source import Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { padding: 0.2rem 0.6rem; border-bottom: 1px solid #ddd; }
th { text-align: right; background: #f4f4f4; } th.text, td.text { text-align: left; }
td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.notes { color: #555; font-size: 0.8rem; } .chart { margin: 1rem 0; }
.banner { background: #fff3cd; border: 1px solid #e0b400; padding: 0.6rem 1rem; font-weight: 600; }
.simulated { color: #8a6d00; font-weight: 600; }
"""


def _table_html(t: Table) -> str:
    columns, rows = with_simulated_column(t)
    head = "".join(f'<th class="{c.kind}">{html.escape(c.title)}</th>' for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{c.kind}">{html.escape(cell(c, v))}</td>'
                         for c, v in zip(columns, row)) + "</tr>"
        for row in rows
    )
    mark = simulated_line(t)
    marker = f'<p class="simulated">{html.escape(mark)}</p>' if mark else ""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in t.notes)
    ident = t.name + (f"-{abs(hash(t.condition)) % 10**8}" if t.condition else "")
    return (f'<section id="table-{html.escape(ident)}"><h2>{html.escape(t.title)}</h2>{marker}'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f'<ul class="notes">{notes}</ul></section>')


def _col(t: Table, key: str) -> list[Any]:
    j = [c.key for c in t.columns].index(key)
    return [row[j] for row in t.rows]


def _label(text: Any) -> str:
    """A name as a chart label: plotly reads labels as a little HTML (<b>, <a href>), so
    markup in a name is escaped and shows as text."""
    return html.escape(str(text), quote=False)


def charts(tables: dict[str, Table]) -> list[tuple[str, Any]]:
    """(name, plotly figure) for each chart whose table is present and has the data the
    chart needs: a line over tool success rates only when there are two or more."""
    import plotly.graph_objects as go

    out: list[tuple[str, Any]] = []
    layout = dict(template="plotly_white", height=420, margin=dict(l=60, r=20, t=50, b=80))
    if "overview" in tables:
        t = tables["overview"]
        rates = _col(t, "success_rate")
        ci = _col(t, "success_ci")
        fig = go.Figure(go.Bar(
            x=[_label(m) for m in _col(t, "model")], y=rates, marker_color="#4C78A8",
            error_y=dict(type="data", symmetric=False, array=[hi - r for r, (_, hi) in zip(rates, ci)],
                         arrayminus=[r - lo for r, (lo, _) in zip(rates, ci)]),
            hovertemplate="%{x}: %{y:.1%}<extra></extra>"))
        fig.update_layout(title="Success rate by model (95 % Wilson intervals)",
                          yaxis=dict(tickformat=".0%", range=[0, 1]), **layout)
        out.append(("success-by-model", fig))
    prompt_tables = [tables[n] for n in ("prompt-types", "flaws") if n in tables]
    if prompt_tables:
        models = sorted({m for t in prompt_tables for m in _col(t, "model")})
        columns = [(t, c) for t in prompt_tables for c in t.columns if c.kind == "rate"
                   and c.key != "adaptability"]
        z = []
        for m in models:
            line = []
            for t, c in columns:
                rows = {r[0]: r for r in t.rows}
                line.append(rows[m][t.columns.index(c)] if m in rows else None)
            z.append(line)
        fig = go.Figure(go.Heatmap(
            z=z, x=[_label(c.key) for _, c in columns], y=[_label(m) for m in models], zmin=0, zmax=1, colorscale="Viridis",
            texttemplate="%{z:.0%}", hovertemplate="%{y} · %{x}: %{z:.1%}<extra></extra>"))
        fig.update_layout(title="Success rate: model × prompt type", **layout)
        out.append(("model-by-prompt-type", fig))
    rate_cols = [c for c in tables["tool-reliability"].columns if c.kind == "rate"] \
        if "tool-reliability" in tables else []
    if len(rate_cols) >= 2:  # a line over one tool success rate would be a single point
        t = tables["tool-reliability"]
        fig = go.Figure()
        for row in t.rows:
            fig.add_trace(go.Scatter(
                x=[float(c.key) for c in rate_cols], y=[row[t.columns.index(c)] for c in rate_cols],
                mode="lines+markers", name=_label(row[0]), hovertemplate="%{x}: %{y:.1%}"))
        fig.update_layout(title="Success rate over tool success rate", xaxis_title="tool success rate",
                          yaxis=dict(tickformat=".0%", range=[0, 1]), **layout)
        out.append(("success-over-tool-reliability", fig))
    if "errors" in tables:
        t = tables["errors"]
        models = [_label(m) for m in _col(t, "model")]
        fig = go.Figure()
        for c in t.columns:
            if c.kind == "rate":
                fig.add_trace(go.Bar(x=models, y=_col(t, c.key), name=_label(c.key),
                                     hovertemplate="%{x}: %{y:.1%}"))
        fig.update_layout(title="Error categories (shares of each model's errors)", barmode="stack",
                          yaxis=dict(tickformat=".0%"), **layout)
        out.append(("error-categories", fig))
    return out


def to_html(tables: list[Table], *, source: str, provenance: Any = None) -> str:
    by_name = {t.name: t for t in tables}
    parts = []
    first = True
    for name, fig in charts(by_name):
        parts.append(f'<div class="chart">{fig.to_html(full_html=False, include_plotlyjs=first, div_id=f"chart-{name}", config={"displaylogo": False})}</div>')
        first = False
    body = "".join(parts) + "".join(_table_html(t) for t in tables)
    sim = sum(c[0] for t in tables[:1] for c in t.simulated)
    n = sum(c[1] for t in tables[:1] for c in t.simulated)
    if provenance is not None:  # the selection's own count, whatever the first table shows
        sim, n = provenance.simulated_tests, provenance.tests
        from ultra.report.provenance import lines

        body += ('<section id="provenance"><h2>Made from</h2><ul class="notes">'
                 + "".join(f"<li>{html.escape(f)}</li>" for f in lines(provenance))
                 + "</ul></section>")
    if sim:  # the first table covers the selection's tests (per model)
        what = "every test in this report was" if sim == n else \
            f"{sim} of the {n} tests in this report were"
        body = (f'<div class="banner simulated" id="simulated-banner">SIMULATED: {what}'
                " answered by the simulator, not by a model</div>" + body)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>ultra report</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>ultra report</h1><p class=\"notes\">from {html.escape(source)}</p>"
        f"{body}</body></html>\n"
    )


__all__ = ["charts", "STYLE", "to_html"]
