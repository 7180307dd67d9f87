"""How well the latency table predicts: predicted against measured latency on every
completed trial of a study (the table assumes latency adds up over blocks)."""

from __future__ import annotations

from typing import Any

import numpy as np

from searchcomp.config import Space
from searchcomp.predict.latency import calibrated_error, latency_error
from searchcomp.predict.store import FILE_NAME
from searchcomp.search.states import is_repeat


def latency_check(space: Space, rows: list[dict[str, Any]], study_name: str | None = None
                  ) -> dict[str, Any] | None:
    """Predicted vs measured latency of the completed trials, or None when the study has no
    latency table. Builds the architecture (fresh weights) for its shapes; measures nothing."""
    if not (space.study_dir(study_name) / FILE_NAME).is_file():
        return None
    from searchcomp.models import build_model, find_blocks, find_head
    from searchcomp.predict.assemble import open_tables

    model = build_model(space.model).eval()
    blocks = find_blocks(model, space)
    head_name, _ = find_head(model, space)
    tables = open_tables(space, model, blocks, head_name, study_name)
    table = tables.latency.table(tables.layout)
    if not np.isfinite(table.base["latency_ms"]):
        return None
    runtime = tables.latency.runtime
    points = []
    for r in rows:
        if r.get("state") != "complete" or is_repeat(r) or \
                r.get("latency_ms") is None:
            continue
        if runtime and r.get("latency_runtime") and r["latency_runtime"] != runtime:
            continue  # measured in another runtime: not comparable
        try:
            row = tables.layout.encode(r.get("recipe") or {})
        except ValueError:
            continue
        p = float(table.predict(row[None])["latency_ms"][0])
        if np.isfinite(p):
            points.append([r["trial"], p, float(r["latency_ms"]), float(r["params"])])
    err = latency_error([p[1] for p in points], [p[2] for p in points])
    if err is None:
        return None
    cal = calibrated_error([p[1] for p in points], [p[3] for p in points],
                           [p[2] for p in points])
    return {**err, "calibrated": cal, "runtime": runtime, "points": points}


def describe_latency_check(check: dict[str, Any] | None) -> str | None:
    """One line for the front table."""
    if not check:
        return None
    bias = "over" if check["mean_rel"] > 0 else "under"
    line = (f"latency table vs measured, {check['trials']} trial(s): mean error "
            f"{100 * check['mean_abs_rel']:.1f} %, worst {100 * check['max_abs_rel']:.1f} % "
            f"({bias}-predicts by {100 * abs(check['mean_rel']):.1f} % on average)")
    cal = check.get("calibrated")
    if cal:
        line += (f"; calibrated on the other trials: mean {100 * cal['mean_abs_rel']:.1f} %, "
                 f"worst {100 * cal['max_abs_rel']:.1f} %")
    return line
