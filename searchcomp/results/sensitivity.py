"""The profile as people read it: blocks x single changes, one table per figure."""

from __future__ import annotations

from typing import Any

from searchcomp.choices import axes
from searchcomp.search.profile import ProfileResult

#: (row key, title, format) of the tables ``profile`` prints, in order
TABLES = (
    ("accuracy_change", "accuracy change after the recovery (validation, vs the reference)",
     "{:+.4f}"),
    ("output_error", "output error right after the change (relative, on calibration images)",
     "{:.3f}"),
    ("size_mib_change", "size change (MiB, from shapes)", "{:+.3f}"),
    ("params_change", "parameters change (thousands, exact)", "{:+,.1f}"),
    ("latency_ms_change", "latency change (ms, from the block latency table)", "{:+.3f}"),
)


def column_label(choice: str, value: Any) -> str:
    """The heading of a single change: ``separable``, ``prune 0.25``, ``8 bit``."""
    return str(value) if choice == "head" else axes.get(choice).label(value)


def columns(rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The (axis, value) columns in a stable order: conv values, prune ratios, bit widths, ...
    (the axes' order)."""
    seen: dict[tuple[str, Any], None] = {}
    for c in axes.names():
        for r in rows:
            if r["choice"] == c:
                seen.setdefault((c, r["value"]), None)
    return list(seen)


def to_json(res: ProfileResult) -> dict[str, Any]:
    """The object ``profile --json`` prints."""
    t = res.tables
    return {"study": res.study, "file": str(t.store.path), "steps": t.sensitivity.steps,
            "reference_accuracy": t.sensitivity.reference,
            "latency_runtime": t.latency.runtime or None, "computed": res.computed,
            "rows": res.rows()}


def to_text(res: ProfileResult) -> str:
    """The blocks x changes tables ``profile`` prints."""
    t = res.tables
    rows = res.rows()
    blocks = [r for r in rows if r["choice"] in axes.names()]
    head = [r for r in rows if r["choice"] == "head"]
    cols = columns(blocks)
    n_known = sum(r["accuracy"] is not None for r in rows)
    ref = t.sensitivity.reference
    lines = [f"profile  {res.study}  ({t.store.path})",
             f"rows     {n_known} of {len(rows)} known ({len(t.layout.blocks)} blocks x their "
             f"changes, {len(head)} head change(s), the reference); computed now {res.computed}"
             + (f" in {res.seconds:.0f} s" if res.computed else ""),
             f"recovery {t.sensitivity.steps} fine-tune step(s) per row; reference (the base "
             f"after the same recovery): val accuracy "
             + ("unknown" if ref is None else f"{ref:.4f}"),
             f"latency  {t.latency.runtime or 'not measured'}, block by block"]
    by = {(r["block"], r["choice"], r["value"]): r for r in rows}
    labels = [column_label(c, v) for c, v in cols]
    width = max([len("block"), *(len(b) for b in t.layout.blocks), len(f"head {t.head_name}")])
    for key, title, fmt in TABLES:
        lines += ["", title]
        widths = [max(len(lab), 8) for lab in labels]
        lines.append(f"{'block':<{width}}  " + "  ".join(
            f"{lab:>{w}}" for lab, w in zip(labels, widths, strict=True)))
        for b in t.layout.blocks:
            cells = []
            for (c, v), w in zip(cols, widths, strict=True):
                r = by.get((b, c, v))
                cells.append(f"{_cell(r, key, fmt):>{w}}")
            lines.append(f"{b:<{width}}  " + "  ".join(cells))
        if head:
            cells = "  ".join(f"{r['value']} {_cell(r, key, fmt)}" for r in head)
            lines.append(f"{'head ' + t.head_name:<{width}}  {cells}")
    lines += ["", "blank: not allowed on that block; ?: not measured yet. Accuracy changes are "
              "single changes: a recipe's prior is their sum (the surrogate sampler corrects it "
              "with finished trials)."]
    return "\n".join(lines)


def _cell(r: dict[str, Any] | None, key: str, fmt: str) -> str:
    if r is None:
        return ""
    v = r.get(key)
    if v is None:
        return "?"
    if key == "params_change":
        v = v / 1e3
    return fmt.format(v)
