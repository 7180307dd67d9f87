"""The report's figures about the predictors: the sensitivity heatmap (accuracy change of
every single change, per block) and the latency table's predictions against measurements."""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

from searchcomp.choices import axes
from searchcomp.results.plots import TEMPLATE
from searchcomp.results.sensitivity import column_label, columns


def sensitivity_heatmap(rows: list[dict[str, Any]], blocks: list[str], head_name: str
                        ) -> go.Figure | None:
    """Blocks (and the head) x single changes, coloured by the validation accuracy change
    after the recovery (red: a drop); each cell's hover adds its output error and its exact
    MiB and latency change. None when no row is known."""
    known = [r for r in rows if r.get("accuracy_change") is not None and r["block"] != "base"]
    if not known:
        return None
    block_rows = [r for r in rows if r["choice"] in axes.names()]
    cols = columns(block_rows)
    heads = [r for r in rows if r["choice"] == "head"]
    xs = [column_label(c, v) for c, v in cols] + [f"head {r['value']}" for r in heads]
    ys = [*blocks, *([f"head ({head_name})"] if heads else [])]
    by = {(r["block"], r["choice"], r["value"]): r for r in rows}
    z, text, hovers = [], [], []
    for b in ys:
        zr, tr, hr = [], [], []
        keys = [(b, c, v) for c, v in cols] + [(None, None, None)] * len(heads) \
            if b in blocks else [(None, None, None)] * len(cols) + [
                (head_name, "head", r["value"]) for r in heads]
        for key, x in zip(keys, xs, strict=True):
            r = by.get(key)
            if r is None or r.get("accuracy_change") is None:
                zr.append(None)
                tr.append("" if r is None else "?")
                hr.append(f"{html.escape(b)} · {html.escape(x)}: "
                          + ("not allowed here" if r is None else "not measured yet"))
                continue
            d = float(r["accuracy_change"])
            zr.append(d)
            tr.append(f"{d:+.3f}")
            lat = r.get("latency_ms_change")
            hr.append(f"<b>{html.escape(b)} · {html.escape(x)}</b><br>accuracy change "
                      f"{d:+.4f} (val accuracy {r['accuracy']:.4f})<br>output error "
                      f"{r.get('output_error') or 0:.3f}<br>size {r['size_mib_change']:+.3f} MiB"
                      f"<br>params {r['params_change']:+,}<br>latency "
                      + ("?" if lat is None else f"{lat:+.3f} ms"))
        z.append(zr)
        text.append(tr)
        hovers.append(hr)
    worst = max(0.01, max(abs(v) for zr in z for v in zr if v is not None))
    fig = go.Figure(go.Heatmap(
        z=z, x=xs, y=ys, text=text, hovertext=hovers, texttemplate="%{text}",
        textfont=dict(size=11), zmin=-worst, zmax=worst, colorscale="RdBu", xgap=2, ygap=2,
        colorbar=dict(title="Δ val acc"), hovertemplate="%{hovertext}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, height=60 + 34 * len(ys) + 110,
                      margin=dict(l=110, r=20, t=30, b=90), hoverlabel=dict(align="left"),
                      plot_bgcolor="white")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", tickangle=-30, showgrid=False)
    return fig


def latency_check_scatter(check: dict[str, Any]) -> go.Figure:
    """Each trial's latency predicted by the block table against the measured one, with the
    diagonal (perfect prediction)."""
    pts = check["points"]
    lo = min(min(p[1], p[2]) for p in pts)
    hi = max(max(p[1], p[2]) for p in pts)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="predicted = measured",
                             line=dict(color="#999999", dash="dash"), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=[p[2] for p in pts], y=[p[1] for p in pts], mode="markers", name="trials",
        marker=dict(color="#1f5fbf", size=8), hovertemplate="%{hovertext}<extra></extra>",
        hovertext=[f"trial {t}: predicted {p:.2f} ms, measured {m:.2f} ms "
                   f"({100 * (p - m) / m:+.1f} %)" for t, p, m, *_ in pts]))
    fig.update_layout(template=TEMPLATE, height=400, margin=dict(l=60, r=20, t=40, b=50),
                      title=dict(text=f"latency: block table vs measured "
                                      f"({html.escape(check.get('runtime') or '')})",
                                 font=dict(size=14)),
                      legend=dict(orientation="h", y=-0.2, x=0))
    fig.update_xaxes(title_text="measured latency (ms)")
    fig.update_yaxes(title_text="predicted latency (ms)")
    return fig
