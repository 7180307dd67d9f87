"""`searchcomp report`: one self-contained HTML file about a study.

Pareto scatters of accuracy against MiB, latency and params (front highlighted, base and
greedy marked, each point's recipe on hover), the front's per-block choices as heatmaps, the
hypervolume over trials and the front as a table. plotly.js is embedded once, inline: the page
works offline and fetches nothing.
"""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path
from typing import Any

import plotly.io as pio
from plotly.offline import get_plotlyjs

from searchcomp.candidate import legend, used_axes
from searchcomp.config import OBJECTIVES, Space
from searchcomp.errors import SearchcompError
from searchcomp.results.plots import (
    LABELS,
    choices_heatmap,
    fmt_metric,
    hypervolume_curve,
    scatter,
)
from searchcomp.results.study import Results, load_results
from searchcomp.search.front import dominates, hypervolume, pareto_front
from searchcomp.search.study import open_study

#: the x axes of the Pareto scatters (FLOPs is added when it is an objective)
SCATTER_X = ("size_mib", "latency_ms", "params")
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}


def default_out(space: Space, study_name: str | None = None) -> Path:
    """``studies/<study>/report.html``."""
    return space.study_dir(study_name) / "report.html"


def hypervolume_by_trial(rows: list[dict[str, Any]], objectives: list[str],
                         base: dict[str, Any]) -> list[dict[str, Any]]:
    """For each complete trial k in number order, the hypervolume of trials 1..k:
    ``hypervolume(rows[:k], objectives, base)``, computed incrementally (only a trial that
    joins the front can change it)."""
    done = sorted((r for r in rows if r.get("state") == "complete"
                   and r.get("confirm_of") is None), key=lambda r: r["trial"])
    out: list[dict[str, Any]] = []
    front: list[dict[str, Any]] = []
    hv = 0.0
    for r in done:
        improved = False
        if base and pareto_front([r], objectives):  # feasible, with every objective
            key = _min_key(r, objectives)
            if not any(dominates(_min_key(f, objectives), key) for f in front):
                front = pareto_front([*front, r], objectives)
                new = hypervolume(front, objectives, base)
                improved, hv = new > hv + 1e-12, new
        out.append({"trial": r["trial"], "hypervolume": hv, "improved": improved,
                    "strategy": r.get("strategy") or "search", "summary": r.get("summary")})
    return out


def _min_key(r: dict[str, Any], objectives: list[str]) -> tuple[float, ...]:
    return tuple(-float(r[o]) if OBJECTIVES[o] == "maximize" else float(r[o])
                 for o in objectives)


def write_report(space: Space, out: Path | None = None, storage: str | None = None,
                 study_name: str | None = None) -> Path:
    """Write the HTML report of the study of ``space`` to ``out`` (default
    ``studies/<study>/report.html``) and return its path."""
    res = load_results(space, storage=storage, study_name=study_name, check_latency=True)
    study = open_study(space, storage=storage, study_name=res.study, load_only=True)
    blocks = list(study.user_attrs.get("blocks") or [])
    head_name = str(study.user_attrs.get("head_name") or "head")
    out = Path(out) if out is not None else default_out(space, study_name)
    from searchcomp.search.profile import read_profile

    prof = read_profile(space, res.study)
    html = render(res, blocks, head_name, space.file,
                  profile_rows=prof.rows() if prof is not None else None)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    except OSError as e:
        raise SearchcompError(f"--out: cannot write {out}: {e}") from None
    return out


# --------------------------------------------------------------------------------------------
# HTML


def _fig_html(fig: Any, div_id: str) -> str:
    return pio.to_html(fig, include_plotlyjs=False, include_mathjax=False, full_html=False,
                       config=PLOT_CONFIG, div_id=div_id,
                       default_height=f"{fig.layout.height or 450}px")


def render(res: Results, blocks: list[str], head_name: str, space_file: str = "",
           generated: datetime | None = None,
           profile_rows: list[dict[str, Any]] | None = None) -> str:
    """The whole page as one string (plotly.js inline in the head); ``profile_rows`` (from
    :meth:`searchcomp.search.profile.ProfileResult.rows`) add the sensitivity heatmap."""
    generated = generated or datetime.now().astimezone()
    xs = [*SCATTER_X, *(["flops"] if "flops" in res.objectives else [])]
    scatters = [_fig_html(scatter(x, res.rows, res.front, res.base, res.greedy, blocks,
                                  res.objectives), f"scatter-{x}") for x in xs]
    heat = choices_heatmap(res.front, blocks, head_name)
    heat_html = (f"<div class=plot>{_fig_html(heat, 'heatmap-choices')}</div>"
                 if heat is not None else "<p class=empty>No front yet: no trial completed.</p>")
    hv_points = hypervolume_by_trial(res.rows, res.objectives, res.base)
    hv_html = "<p class=empty>No complete trial yet.</p>"
    if hv_points:
        curve = hypervolume_curve(hv_points, res.objectives)
        hv_html = f"<div class=plot>{_fig_html(curve, 'hypervolume-curve')}</div>"
    key = legend(used_axes([r.get("recipe") for r in res.rows]))
    sections = [
        _section("pareto", "Pareto front: accuracy against each cost",
                 "<p class=note>Every complete trial is a faint dot (crosses: infeasible; "
                 "orange rings: steps of the greedy baseline). The front — trials no other "
                 f"feasible trial beats on every objective ({_esc(', '.join(res.objectives))})"
                 " — is highlighted and joined in order of the x axis; in two dimensions some "
                 "of its points can look dominated, since they win on another objective. "
                 "Error bars: the 95 % interval of each accuracy (the validation images' "
                 "Wilson interval; with confirmation runs, of their mean, the seeds' spread "
                 "included); dashes: the confirmation runs themselves. Open circles: points "
                 "another beats only within that noise, kept on the front. "
                 "Hover a point for its metrics and recipe.</p>"
                 + "<div class=grid>" + "".join(f"<div class=plot>{s}</div>" for s in scatters)
                 + "</div>"),
        _section("choices", "Choices the front members took, per block",
                 "<p class=note>One row per front member (in the table's order), one column per "
                 "block in model order. Light grey cells are unchanged (keep, prune 0, "
                 "32-bit).</p>" + heat_html),
        _section("hypervolume", "Hypervolume over trials",
                 "<p class=note>The volume the front of the first k complete trials dominates "
                 "in (1 − accuracy) × (cost / base cost) space, up to accuracy 0 and the base's "
                 "costs; green rings mark the trials that made it grow.</p>"
                 + hv_html),
        _section("front", "The front", _table(res) + f"<p class=note>{_esc(key)}</p>"),
    ]
    sections.insert(2, _predictors_section(res, blocks, head_name, profile_rows))
    return PAGE.format(title=_esc(f"searchcomp report: {res.study}"), css=CSS,
                       plotlyjs=get_plotlyjs(), header=_header(res, space_file, generated),
                       body="\n".join(sections))


def _predictors_section(res: Results, blocks: list[str], head_name: str,
                        profile_rows: list[dict[str, Any]] | None) -> str:
    """The sensitivity heatmap and the latency table's check, when the study has them."""
    from searchcomp.results.profile_plots import latency_check_scatter, sensitivity_heatmap

    heat = sensitivity_heatmap(profile_rows, blocks, head_name) if profile_rows else None
    body = ("<p class=note>Validation accuracy change of every single change, after the "
            "profile's short recovery, against the unchanged base after the same recovery "
            "(<code>searchcomp profile</code>); red is a drop. Hover a cell for its output "
            "error and exact size and latency change.</p>"
            + f"<div class=plot>{_fig_html(heat, 'heatmap-sensitivity')}</div>"
            if heat is not None else "<p class=empty>No sensitivity table: run "
            "<code>searchcomp profile SPACE</code>.</p>")
    if res.latency_check:
        from searchcomp.results.checks import describe_latency_check

        scatter_html = _fig_html(latency_check_scatter(res.latency_check), "latency-check")
        body += (f"<p class=note>{_esc(describe_latency_check(res.latency_check))}.</p>"
                 f"<div class=plot>{scatter_html}</div>")
    return _section("sensitivity", "Sensitivity of each block, and the latency table", body)


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _header(res: Results, space_file: str, generated: datetime) -> str:
    objectives = ", ".join(f"{o} ({'max' if OBJECTIVES[o] == 'maximize' else 'min'})"
                           for o in res.objectives)
    counts = res.counts()
    states = ", ".join(f"{v} {k}" for k, v in counts.items()) or "none"
    b = res.base
    base = " · ".join(f"{LABELS[k]} {fmt_metric(k, b[k])}" for k in LABELS if k in b) or "–"
    greedy = "none (no greedy run in this study)"
    g = res.greedy
    if g:
        greedy = (f"trial {g['trial']}: {g.get('swap')} on {len(g.get('kept') or [])} block(s)"
                  if g.get("trial") is not None else "no block could be swapped")
        greedy += f", threshold {g.get('threshold')}, {g.get('steps', '?')} step(s)"
    items = [("study", res.study), ("space file", space_file or "–"),
             ("storage", res.storage), ("objectives", objectives),
             ("trials", f"{len(res.rows)} finished: {states}"),
             ("front", f"{len(res.front)} point(s)"),
             ("hypervolume", f"{res.hypervolume:.4f}" + (
                 f" (95 % interval from the confirmation runs {res.hypervolume_interval[0]:.4f}"
                 f" – {res.hypervolume_interval[1]:.4f})" if res.hypervolume_interval else "")),
             ("base", base), ("latency runtime", b.get("latency_runtime") or "–"),
             ("greedy baseline", greedy),
             ("generated", generated.strftime("%Y-%m-%d %H:%M:%S %Z").strip())]
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in items)
    return (f"<header><h1>searchcomp report — {_esc(res.study)}</h1>"
            f"<table class=meta>{rows}</table></header>")


def _rel(value: Any, base: Any) -> str:
    try:
        return f' <span class=rel>{100 * float(value) / float(base):.0f}%</span>'
    except (TypeError, ValueError, ZeroDivisionError):
        return ""


def _in_trial(r: dict[str, Any]) -> str:
    """The in-trial latency as a note under a quietly re-measured one."""
    if not r.get("latency_quiet"):
        return ""
    return (f'<br><span class=rel title="measured during the trial, possibly under the load of '
            f'other trials">in trial {float(r["latency_in_trial_ms"]):.2f}</span>')


def _uncertain(r: dict[str, Any]) -> str:
    """The accuracy's 95 % interval, its confirmation runs and noise marks, under it."""
    out = ""
    if r.get("accuracy_low") is not None:
        out += f'<br><span class=rel>[{r["accuracy_low"]:.4f}, {r["accuracy_high"]:.4f}]</span>'
    if r.get("accuracy_runs"):
        out += (f'<br><span class=rel title="mean of {r["accuracy_runs"]} fine-tunes">'
                f'{r["accuracy_runs"]} runs, sd {r["accuracy_std"]:.4f}; search\'s '
                f'{r["accuracy_search"]:.4f}</span>')
    if r.get("within_noise_of"):
        out += ('<br><span class=rel>~ within noise of '
                + ", ".join(map(str, r["within_noise_of"])) + "</span>")
    if r.get("lead_within_noise_over"):
        out += ('<br><span class=rel>lead over ' + ", ".join(map(str, r["lead_within_noise_over"]))
                + " within noise</span>")
    return out


def _spread(r: dict[str, Any]) -> str:
    """The latency's p10 – p90 and the under-load flag, under it."""
    if r.get("latency_p10_ms") is None:
        return ""
    load = " <b title='p90 / median > 1.25'>under load</b>" if r.get("latency_under_load") else ""
    return (f'<br><span class=rel>p10–p90 {r["latency_p10_ms"]:.2f}–'
            f'{r["latency_p90_ms"]:.2f}{load}</span>')


def _table(res: Results) -> str:
    """The front as a plain HTML table, with the base and the greedy result."""
    b = res.base
    head = ("<tr><th>trial</th><th>strategy</th><th>val accuracy</th><th>Δ vs base</th>"
            "<th>params</th><th>MiB</th><th>latency ms</th><th>FLOPs</th>"
            "<th class=left>summary</th></tr>")

    def cells(r: dict[str, Any]) -> str:
        acc = r.get("accuracy")
        delta = (f"{float(acc) - float(b['accuracy']):+.4f}"
                 if acc is not None and b.get("accuracy") is not None else "–")
        num = [fmt_metric("accuracy", acc) + _uncertain(r), delta,
               fmt_metric("params", r.get("params")) + _rel(r.get("params"), b.get("params")),
               (f"{float(r['size_mib']):.3f}" if r.get("size_mib") is not None else "–")
               + _rel(r.get("size_mib"), b.get("size_mib")),
               (f"{float(r['latency_ms']):.2f}" if r.get("latency_ms") is not None else "–")
               + _rel(r.get("latency_ms"), b.get("latency_ms")) + _in_trial(r) + _spread(r),
               fmt_metric("flops", r.get("flops"))]
        return "".join(f"<td>{c}</td>" for c in num)

    rows = [f'<tr class=base id="row-base"><td>base</td><td>–</td>{cells(b)}'
            f"<td class=left>the base model, before any change</td></tr>"]
    for r in res.front:
        t = int(r["trial"])
        strategy = _esc(r.get("strategy") or "") + (
            f" <span class=rel>{_esc(r['tag'])}</span>" if r.get("tag") else "")
        rows.append(f'<tr class=front id="trial-{t}" data-trial="{t}"><td>{t}</td>'
                    f"<td>{strategy}</td>{cells(r)}"
                    f"<td class='left mono'>{_esc(r.get('summary') or '')}</td></tr>")
    g = res.greedy
    if g:
        if g.get("trial") is not None:
            src = res.row(int(g["trial"])) or {}
            note = (f"{_esc(src.get('summary') or '')}<br><span class=rel>trial {g['trial']}: "
                    f"{g.get('swap')} on {len(g.get('kept') or [])} block(s), threshold "
                    f"{_esc(g.get('threshold'))}</span>")
            rows.append(f'<tr class=greedy id="row-greedy" data-trial="{int(g["trial"])}">'
                        f"<td>greedy</td><td>greedy</td>{cells(g)}"
                        f"<td class='left mono'>{note}</td></tr>")
        else:
            rows.append(f'<tr class=greedy id="row-greedy"><td>greedy</td><td>greedy</td>'
                        f'<td colspan=7 class=left>no block could be swapped at threshold '
                        f"{_esc(g.get('threshold'))}</td></tr>")
    if not res.front:
        rows.append("<tr><td colspan=9 class=empty>no complete trial yet</td></tr>")
    return (f"<table class=front-table><thead>{head}</thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       margin: 0; background: #f6f7f9; }
main { max-width: 1400px; margin: 0 auto; padding: 16px 24px 40px; }
header h1 { font-size: 22px; margin: 8px 0 12px; }
h2 { font-size: 17px; margin: 28px 0 6px; border-bottom: 1px solid #d8dce2; padding-bottom: 4px; }
section, header { background: #fff; border-radius: 6px; padding: 4px 16px 12px;
                  margin-top: 14px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
table.meta th { text-align: left; color: #555; font-weight: 600; padding: 2px 16px 2px 0;
                vertical-align: top; white-space: nowrap; }
table.meta td { padding: 2px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 12px; }
.plot { min-width: 0; }
.note { color: #555; font-size: 13px; margin: 4px 0 8px; }
.empty { color: #a33; }
table.front-table { border-collapse: collapse; width: 100%; font-size: 13px; }
.front-table th, .front-table td { border-bottom: 1px solid #e3e6ea; padding: 5px 8px;
                                   text-align: right; vertical-align: top; }
.front-table td { white-space: nowrap; }
.front-table th { background: #eef1f5; position: sticky; top: 0; }
.front-table .left { text-align: left; }
.front-table .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace;
                     white-space: nowrap; }
.front-table tr.base { background: #f3f3f3; font-weight: 600; }
.front-table tr.greedy { background: #fff3e6; }
.front-table tr.front:hover { background: #eaf2ff; }
.rel { color: #888; font-size: 11px; font-weight: normal; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<script type="text/javascript">{plotlyjs}</script>
</head>
<body>
<main>
{header}
{body}
</main>
<script type="text/javascript">
// plots drawn while the page was still laying out get their final size
window.addEventListener("load", function () {{
  document.querySelectorAll(".js-plotly-plot").forEach(function (d) {{
    Plotly.Plots.resize(d);
  }});
}});
</script>
</body>
</html>
"""
