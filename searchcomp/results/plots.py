"""The figures of the HTML report (plotly): Pareto scatters, the front's per-block choices,
the hypervolume over trials. Pure functions from result rows to ``go.Figure``."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from searchcomp.choices import axes
from searchcomp.config import KEEP, OBJECTIVES

LABELS = {"accuracy": "validation accuracy", "params": "parameters", "size_mib": "size (MiB)",
          "latency_ms": "latency (ms)", "flops": "FLOPs"}
#: x axes drawn on a log scale (they span orders of magnitude once blocks are compressed)
LOG_X = {"params", "size_mib", "flops"}
TEMPLATE = "plotly_white"
FRONT_COLOR = "#1f5fbf"
BASE_COLOR = "#111111"
GREEDY_COLOR = "#e8710a"
STRATEGY_COLORS = {"seed": "#7f7f7f", "search": FRONT_COLOR, "greedy": GREEDY_COLOR}
#: heatmap colours of the registered conv/head choices, in registration order
CHOICE_COLORS = ("#8fb8e8", "#9ad0c8", "#f7b267", "#a8d98a", "#e8a0b4", "#c9b3e6", "#d9c27a",
                 "#8fd0e8")
OTHER_KIND = ("#d9b3e6", "?")
NEUTRAL_CELL = "#eeeeee"


def choice_kinds() -> dict[str, tuple[str, str]]:
    """Choice name -> (heatmap colour, short cell label), ``keep`` first, then every
    registered conv and head choice."""
    from searchcomp import choices

    out = {KEEP: (NEUTRAL_CELL, KEEP)}
    for c in [*choices.all_choices("conv"), *choices.all_choices("head")]:
        if c.name not in out:
            out[c.name] = (CHOICE_COLORS[(len(out) - 1) % len(CHOICE_COLORS)], c.label)
    return out


# --------------------------------------------------------------------------------------------
# Text


def fmt_metric(key: str, value: Any) -> str:
    """One metric, formatted for people: ``0.7340``, ``1.44 M``, ``5.562 MiB``, ``3.34 ms``."""
    if value is None:
        return "–"
    v = float(value)
    if key == "accuracy":
        return f"{v:.4f}"
    if key == "params":
        return f"{v / 1e6:.3f} M"
    if key == "flops":
        return f"{v / 1e6:.1f} M"
    if key == "size_mib":
        return f"{v:.3f} MiB"
    if key == "latency_ms":
        return f"{v:.2f} ms"
    return f"{v:g}"


def block_choice(recipe_blocks: dict[str, Any], block: str, name: str) -> Any:
    """The value of axis ``name`` on ``block`` (neutral when the recipe leaves it out)."""
    return (recipe_blocks.get(block) or {}).get(name, axes.neutral(name))


def recipe_lines(recipe: dict[str, Any] | None, blocks: Sequence[str]) -> list[str]:
    """The recipe per block in readable form: ``layer1.0: separable, prune 0.5, 8 bit``; blocks
    with every choice neutral are summed up in one line."""
    recipe = recipe or {}
    rb = recipe.get("blocks") or {}
    names = list(blocks) or list(rb)
    lines, kept = [], []
    for b in names:
        parts = [a.label(v) for a in axes.all_axes()
                 if (v := block_choice(rb, b, a.name)) != a.neutral]
        if parts:
            lines.append(f"{b}: {', '.join(parts)}")
        else:
            kept.append(b)
    if kept:
        lines.append(f"unchanged: {', '.join(kept)}" if lines else "every block unchanged")
    lines.append(f"head: {recipe.get('head', 'keep')}")
    return lines


def hover(row: dict[str, Any], blocks: Sequence[str], title: str) -> str:
    """Hover text of one point: title, metrics, summary and the recipe per block (escaped)."""
    out = [f"<b>{html.escape(title)}</b>"]
    out += [f"{LABELS[k]}: {fmt_metric(k, row.get(k))}" for k in LABELS if row.get(k) is not None]
    if row.get("accuracy_low") is not None:
        out.append(f"accuracy 95 % interval: {row['accuracy_low']:.4f} – "
                   f"{row['accuracy_high']:.4f}")
    if row.get("accuracy_runs"):
        out.append(f"{row['accuracy_runs']} fine-tunes: mean {row['accuracy']:.4f}, sd "
                   f"{row['accuracy_std']:.4f} (search's run {row['accuracy_search']:.4f})")
    if row.get("latency_p10_ms") is not None:
        out.append(f"latency p10–p90: {row['latency_p10_ms']:.2f} – {row['latency_p90_ms']:.2f} ms"
                   + (" <b>timed under load</b>" if row.get("latency_under_load") else ""))
    if row.get("within_noise_of"):
        out.append("dominated only within noise by trial(s) "
                   + ", ".join(map(str, row["within_noise_of"])))
    if row.get("latency_quiet"):
        out.append(f"latency in trial: {fmt_metric('latency_ms', row['latency_in_trial_ms'])} "
                   "(the figure above: measured again, quietly)")
    if row.get("tag"):
        out.append(f"tag: {html.escape(str(row['tag']))}")
    if row.get("feasible") is False:
        out.append("<i>infeasible (violates a constraint)</i>")
    if row.get("summary"):
        out.append(html.escape(str(row["summary"])))
    if row.get("recipe") is not None:
        out += [html.escape(s) for s in recipe_lines(row["recipe"], blocks)]
    return "<br>".join(out)


# --------------------------------------------------------------------------------------------
# Pareto scatter


def _points(rows: list[dict[str, Any]], x: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get(x) is not None and r.get("accuracy") is not None]


def scatter(x: str, rows: list[dict[str, Any]], front: list[dict[str, Any]],
            base: dict[str, Any], greedy: dict[str, Any] | None, blocks: Sequence[str],
            objectives: Sequence[str]) -> go.Figure:
    """Validation accuracy against metric ``x``: every complete trial faint (infeasible ones
    as crosses, greedy steps in orange, anchors as squares), candidates the rungs strategy
    stopped early at their last rung's accuracy (open triangles: not fully fine-tuned, never
    on the front), the front highlighted and joined in order of ``x``, the base as a star
    and the greedy result as a diamond."""
    fig = go.Figure()
    done = _points([r for r in rows if r.get("state") == "complete"
                    and r.get("confirm_of") is None], x)
    stopped = [{**r, **(r.get("rung_costs") or {}),
                "accuracy": (r.get("rung_accuracy") or {}).get(str(r.get("rung")))}
               for r in rows if r.get("state") == "stopped" and r.get("rung") is not None]
    stopped = _points(stopped, x)
    if stopped:
        fig.add_trace(go.Scatter(
            x=[r[x] for r in stopped], y=[r["accuracy"] for r in stopped], mode="markers",
            name="stopped at a lower rung", marker=dict(color="#9a9a9a", size=6, opacity=0.35,
                                                        symbol="triangle-down-open"),
            hovertemplate="%{hovertext}<extra></extra>",
            hovertext=[f"trial {r['trial']}: stopped at rung {r['rung']} (accuracy "
                       f"{r['accuracy']:.4f} there, not fully fine-tuned)<br>"
                       f"{r.get('summary') or ''}" for r in stopped]))
    groups = [
        ("trials", [r for r in done if r.get("feasible", True)
                    and r.get("strategy") not in ("greedy", "anchor")],
         dict(color="#9a9a9a", size=7, opacity=0.45, symbol="circle")),
        ("anchors (one-minute baselines)", [r for r in done if r.get("feasible", True)
                                            and r.get("strategy") == "anchor"],
         dict(color="#34495e", size=9, opacity=0.8, symbol="square-open",
              line=dict(width=2))),
        ("greedy steps", [r for r in done if r.get("feasible", True)
                          and r.get("strategy") == "greedy"],
         dict(color=GREEDY_COLOR, size=7, opacity=0.35, symbol="circle-open",
              line=dict(width=1.5))),
        ("infeasible", [r for r in done if not r.get("feasible", True)],
         dict(color="#c0392b", size=8, opacity=0.6, symbol="x-thin-open", line=dict(width=2))),
    ]
    for name, pts, marker in groups:
        if pts:
            fig.add_trace(go.Scatter(
                x=[r[x] for r in pts], y=[r["accuracy"] for r in pts], mode="markers",
                name=name, marker=marker, hovertemplate="%{hovertext}<extra></extra>",
                hovertext=[hover(r, blocks, f"trial {r['trial']}") for r in pts]))
    fr = sorted(_points(front, x), key=lambda r: (r[x], -r["accuracy"]))
    runs = _points([r for r in rows if r.get("state") == "complete"
                    and r.get("confirm_of") is not None], x)
    at = {r["trial"]: r[x] for r in fr}
    runs = [r for r in runs if r["confirm_of"] in at]
    if runs:  # each confirmation run at its front point's cost: the spread, seen
        fig.add_trace(go.Scatter(
            x=[at[r["confirm_of"]] for r in runs], y=[r["accuracy"] for r in runs],
            mode="markers", name="confirmation runs",
            marker=dict(color=FRONT_COLOR, size=6, opacity=0.5, symbol="line-ew-open",
                        line=dict(width=2)),
            hovertemplate="%{hovertext}<extra></extra>",
            hovertext=[f"run {r.get('confirm_run')} of trial {r['confirm_of']}: accuracy "
                       f"{r['accuracy']:.4f}" for r in runs]))
    if fr:
        fig.add_trace(go.Scatter(
            x=[r[x] for r in fr], y=[r["accuracy"] for r in fr], mode="lines+markers",
            name=f"front ({len(fr)})", line=dict(color=FRONT_COLOR, width=1.5, dash="dot"),
            marker=dict(color=FRONT_COLOR, size=11, line=dict(color="white", width=1),
                        symbol=["circle-open" if r.get("within_noise_of") else "circle"
                                for r in fr]),
            error_y=error_bars(fr), hovertemplate="%{hovertext}<extra></extra>",
            hovertext=[hover(r, blocks, f"trial {r['trial']} (front)") for r in fr]))
    if base.get(x) is not None and base.get("accuracy") is not None:
        fig.add_trace(go.Scatter(
            x=[base[x]], y=[base["accuracy"]], mode="markers", name="base",
            error_y=error_bars([base]),
            marker=dict(color=BASE_COLOR, size=17, symbol="star", line=dict(color="white",
                                                                            width=1)),
            hovertemplate="%{hovertext}<extra></extra>",
            hovertext=[hover({**base, "recipe": {"blocks": {}, "head": "keep"}}, blocks,
                             "base model (before any change)")]))
    if greedy and greedy.get(x) is not None and greedy.get("accuracy") is not None:
        title = (f"greedy result: trial {greedy['trial']}" if greedy.get("trial") is not None
                 else "greedy result: no block swapped")
        fig.add_trace(go.Scatter(
            x=[greedy[x]], y=[greedy["accuracy"]], mode="markers", name="greedy result",
            marker=dict(color=GREEDY_COLOR, size=15, symbol="diamond",
                        line=dict(color="black", width=1)),
            hovertemplate="%{hovertext}<extra></extra>",
            hovertext=[hover({**greedy, "recipe": {"blocks": greedy.get("recipe") or {},
                                                   "head": "keep"},
                              "summary": f"{greedy.get('swap')} on {len(greedy.get('kept') or [])} "
                                         f"block(s), threshold {greedy.get('threshold')}"},
                             blocks, title)]))
    in_front = "" if x in objectives else " (not an objective)"
    fig.update_layout(
        template=TEMPLATE, height=440, margin=dict(l=60, r=20, t=50, b=50),
        title=dict(text=f"accuracy vs {LABELS[x]}{in_front}", font=dict(size=15)),
        legend=dict(orientation="h", y=-0.18, x=0), hoverlabel=dict(align="left"))
    fig.update_xaxes(title_text=LABELS[x] + (" (log)" if x in LOG_X else ""),
                     type="log" if x in LOG_X else "linear")
    fig.update_yaxes(title_text="validation accuracy")
    return fig


def error_bars(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Plotly ``error_y`` of the rows' 95 % accuracy intervals (with confirmation runs, of
    their mean, the runs' spread included); None when no row has one."""
    if not any(r.get("accuracy_low") is not None for r in rows):
        return None
    up = [max(0.0, float(r["accuracy_high"]) - float(r["accuracy"]))
          if r.get("accuracy_high") is not None else 0.0 for r in rows]
    down = [max(0.0, float(r["accuracy"]) - float(r["accuracy_low"]))
            if r.get("accuracy_low") is not None else 0.0 for r in rows]
    return dict(type="data", symmetric=False, array=up, arrayminus=down, thickness=1.2,
                width=3, color=FRONT_COLOR)


# --------------------------------------------------------------------------------------------
# Per-block choices of the front


def _steps(colors: list[str]) -> list[list[Any]]:
    """A discrete colour scale: integer z = i gets colors[i] (with zmin 0, zmax len - 1)."""
    n = len(colors)
    if n == 1:
        return [[0.0, colors[0]], [1.0, colors[0]]]
    out: list[list[Any]] = []
    for i, c in enumerate(colors):
        lo, hi = max(0.0, (i - 0.5) / (n - 1)), min(1.0, (i + 0.5) / (n - 1))
        out += [[lo, c], [hi, c]]
    return out


def _conv_cell(value: str, kinds: list[str], hover_prefix: str) -> tuple[int, str, str]:
    """A conv (or head) cell: z = index of the value's kind in ``kinds`` (extended when new),
    the short label, the hover text."""
    kind, _, arg = value.partition(":")
    if kind not in kinds:
        kinds.append(kind)
    label = choice_kinds().get(kind, OTHER_KIND)[1] + (f":{arg}" if arg else "")
    return kinds.index(kind), label, hover_prefix + html.escape(value)


def choices_heatmap(front: list[dict[str, Any]], blocks: Sequence[str], head_name: str
                    ) -> go.Figure | None:
    """One row per front member, one column per block (and the head), one panel per axis
    the front's recipes show (:func:`searchcomp.candidate.used_axes`): the conv choice by
    kind (with the head's), then each numeric axis on its own scale (the share of filters
    pruned, the weights' bit width, ...). Neutral cells are light grey; hover gives the
    full value."""
    from searchcomp.candidate import used_axes

    if not front:
        return None
    names = list(blocks) or sorted({b for r in front
                                    for b in ((r.get("recipe") or {}).get("blocks") or {})})
    head_col = f"head ({head_name})"
    cols = [*names, head_col]
    ys = [f"trial {r['trial']}" for r in front]
    known = choice_kinds()
    kinds = list(known)
    shown = [axes.get(a) for a in used_axes([r.get("recipe") for r in front])]
    head_axis = next((a.name for a in shown if a.heat(a.neutral) is None), None)
    # per panel: z (colour), cell text, hover text; one list per front member
    panels: dict[str, tuple[list, list, list]] = {a.name: ([], [], []) for a in shown}
    for r in front:
        rb = (r.get("recipe") or {}).get("blocks") or {}
        head = str((r.get("recipe") or {}).get("head", "keep"))
        cells: dict[str, list[tuple[Any, str, str]]] = {k: [] for k in panels}
        for b in names:
            where = f"trial {r['trial']} · {html.escape(b)}<br>"
            for a in shown:
                v = block_choice(rb, b, a.name)
                z = a.heat(v)
                if z is None:
                    cells[a.name].append(_conv_cell(str(v), kinds, f"{where}{a.name}: "))
                else:
                    text = f"{v:g}" if isinstance(v, float) else str(v)
                    cells[a.name].append((z, text, f"{where}{html.escape(a.label(v))}"
                                          + (" (unchanged)" if v == a.neutral else "")))
        where = f"trial {r['trial']} · head {html.escape(head_name)}<br>"
        for a in shown:
            cells[a.name].append(_conv_cell(head, kinds, where) if a.name == head_axis else
                                 (None, "", f"{where}the head takes no {a.name}"))
        for k, (zs, texts, hovers) in panels.items():
            zs.append([c[0] for c in cells[k]])
            texts.append([c[1] for c in cells[k]])
            hovers.append([c[2] for c in cells[k]])

    n = len(shown)
    height = n * (24 * len(front) + 50) + 140
    fig = make_subplots(rows=n, cols=1, shared_xaxes=True, vertical_spacing=50 / height,
                        subplot_titles=[f"{a.name}: {a.description}" for a in shown])
    colors = [known.get(k, OTHER_KIND)[0] for k in kinds]
    common = dict(x=cols, y=ys, texttemplate="%{text}", textfont=dict(size=11), xgap=2, ygap=2,
                  showscale=False, hovertemplate="%{hovertext}<extra></extra>")
    for i, a in enumerate(shown, start=1):
        z, text, hover_text = panels[a.name]
        if a.name == head_axis or a.heat(a.neutral) is None:
            zmax, scale = max(1, len(kinds) - 1), _steps(colors)
        else:
            zmax, scale = a.heat_max, [[0, NEUTRAL_CELL], [1, a.color]]
        fig.add_trace(go.Heatmap(z=z, text=text, hovertext=hover_text, zmin=0, zmax=zmax,
                                 colorscale=scale, name=a.name, **common), row=i, col=1)
    fig.update_layout(template=TEMPLATE, height=height, margin=dict(l=80, r=20, t=50, b=90),
                      hoverlabel=dict(align="left"), plot_bgcolor="white")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", tickangle=-35, showgrid=False)
    return fig


# --------------------------------------------------------------------------------------------
# Hypervolume


def hypervolume_curve(points: list[dict[str, Any]], objectives: Sequence[str]) -> go.Figure:
    """Hypervolume of the complete trials so far (``points``: trial, hypervolume, strategy,
    summary), as a step line with one marker per trial coloured by strategy."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[p["trial"] for p in points], y=[p["hypervolume"] for p in points], mode="lines",
        line=dict(color="#555555", width=2, shape="hv"), name="hypervolume",
        hoverinfo="skip"))
    grew = [p for p in points if p["improved"]]
    if grew:
        fig.add_trace(go.Scatter(
            x=[p["trial"] for p in grew], y=[p["hypervolume"] for p in grew], mode="markers",
            name="hypervolume grew", hoverinfo="skip",
            marker=dict(color="#2ca02c", size=16, symbol="circle-open", line=dict(width=2))))
    for strategy in dict.fromkeys(p["strategy"] for p in points):
        pts = [p for p in points if p["strategy"] == strategy]
        fig.add_trace(go.Scatter(
            x=[p["trial"] for p in pts], y=[p["hypervolume"] for p in pts], mode="markers",
            name=f"{strategy} trials",
            marker=dict(color=STRATEGY_COLORS.get(strategy, "#9467bd"), size=8),
            hovertemplate="%{hovertext}<extra></extra>",
            hovertext=[f"<b>after trial {p['trial']}</b> ({html.escape(strategy)})<br>"
                       f"hypervolume {p['hypervolume']:.4f}"
                       + (" — it grew" if p["improved"] else "")
                       + f"<br>{html.escape(str(p.get('summary') or ''))}" for p in pts]))
    arrows = ", ".join(f"{o} {'max' if OBJECTIVES[o] == 'maximize' else 'min'}"
                       for o in objectives)
    fig.update_layout(
        template=TEMPLATE, height=380, margin=dict(l=60, r=20, t=50, b=50),
        title=dict(text=f"hypervolume of the complete trials so far ({arrows})",
                   font=dict(size=15)),
        legend=dict(orientation="h", y=-0.2, x=0), hoverlabel=dict(align="left"))
    span = max((p["trial"] for p in points), default=0) - min((p["trial"] for p in points),
                                                                 default=0)
    fig.update_xaxes(title_text="trial number", dtick=max(1, math.ceil(span / 15)))
    fig.update_yaxes(title_text="hypervolume", rangemode="tozero")
    return fig
