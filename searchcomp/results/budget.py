"""`searchcomp front --max-size-mib X --max-latency-ms Y [--min-accuracy A]`: what is best
inside a budget, measured and predicted.

The measured answer is the most accurate completed, feasible trial inside the limits. The
predicted one is the recipe no trial has run whose predicted costs are inside (params, MiB
exactly; latency from the block table) with the highest predicted validation accuracy (the
sensitivity table's prior corrected by the study's trials), with a 95 % interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from searchcomp.candidate import Recipe, shown_axes
from searchcomp.config import Space
from searchcomp.predict.budget import Budget
from searchcomp.predict.layout import row_keys
from searchcomp.results.study import load_results
from searchcomp.search.states import is_repeat

#: two-sided 95 % normal interval
Z95 = 1.96


@dataclass
class BudgetAnswer:
    """The best measured trial and the best predicted unmeasured recipe inside a budget."""

    study: str
    budget: Budget
    measured: dict[str, Any] | None
    candidate: dict[str, Any] | None
    in_budget: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The object ``front --json`` prints with limits."""
        return {"study": self.study, "budget": {**self.budget.max_costs,
                                                "min_accuracy": self.budget.min_accuracy},
                "trials_in_budget": self.in_budget, "measured": self.measured,
                "predicted": self.candidate, "notes": self.notes}

    def to_text(self) -> str:
        """Two short paragraphs: measured, then predicted."""
        lines = [f"study {self.study}: budget {self.budget.describe()}",
                 f"{self.in_budget} completed trial(s) inside it", ""]
        m = self.measured
        if m:
            lines.append(f"best measured: trial {m['trial']}  val acc {m['accuracy']:.4f}  "
                         f"{m['size_mib']:.3f} MiB  {m['latency_ms']:.2f} ms  "
                         f"{m['params'] / 1e6:.3f} M params")
            lines.append(f"  {m.get('summary') or ''}")
        else:
            lines.append("best measured: none of the study's trials is inside this budget")
        c = self.candidate
        if c:
            lo, hi = c["accuracy_interval"]
            lines += ["", f"best predicted, not run yet: val acc {c['accuracy']:.4f} "
                      f"(95 % interval {lo:.3f}..{hi:.3f})  {c['size_mib']:.3f} MiB (from shapes)  "
                      f"{c['latency_ms']:.2f} ms (predicted)  {c['params'] / 1e6:.3f} M params",
                      f"  {c['summary']}",
                      f"  run it: searchcomp run SPACE --target \"{self._target()}\""]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _target(self) -> str:
        parts = [f"{k}<={v:g}" for k, v in self.budget.max_costs.items()]
        if self.budget.min_accuracy is not None:
            parts.append(f"accuracy>={self.budget.min_accuracy:g}")
        return ",".join(parts)


def answer_budget(space: Space, budget: Budget, *, storage: str | None = None,
                  study_name: str | None = None) -> BudgetAnswer:
    """The measured and the predicted best inside ``budget`` (trains and measures nothing)."""
    res = load_results(space, storage=storage, study_name=study_name)
    done = [r for r in res.rows if r["state"] == "complete" and r.get("feasible", True)
            and not is_repeat(r) and r.get("accuracy") is not None]
    inside = [r for r in done if budget.inside({k: r.get(k, np.nan) for k in
                                                ("accuracy", *budget.max_costs)})[0]]
    best = max(inside, key=lambda r: (r["accuracy"], -r["size_mib"]), default=None)
    measured = None if best is None else {k: best.get(k) for k in (
        "trial", "accuracy", "params", "size_mib", "latency_ms", "flops", "summary", "recipe")}
    answer = BudgetAnswer(res.study, budget, measured, None, len(inside))
    _predict(space, res, budget, answer, done)
    return answer


def _predict(space: Space, res, budget: Budget, answer: BudgetAnswer,
             done: list[dict[str, Any]]) -> None:
    from searchcomp.models import build_model, find_blocks, find_head
    from searchcomp.predict.assemble import open_tables

    model = build_model(space.model).eval()
    blocks = find_blocks(model, space)
    head_name, _ = find_head(model, space)
    tables = open_tables(space, model, blocks, head_name, res.study)
    if not tables.sensitivity.rows:
        answer.notes.append(f"no sensitivity table yet: 'searchcomp profile {space.file}' "
                            "makes one, then this also predicts the best recipe not run yet")
        return
    if not res.base:
        answer.notes.append("the study has no base model recorded yet: run it first")
        return
    pred = tables.predictor(res.base)
    if "latency_ms" in budget.max_costs and not np.isfinite(pred.costs.base["latency_ms"]):
        answer.notes.append("no latency table yet ('searchcomp profile' measures it)")
        return
    lay = tables.layout
    rows, accs, lats, seen = [], [], [], set()
    done_numbers = {r["trial"] for r in done}
    for r in res.rows:
        try:
            row = lay.encode(r.get("recipe") or {})
        except ValueError:
            continue  # a recipe from another version of the space
        seen.add(row.tobytes())
        if r["trial"] in done_numbers:
            rows.append(row)
            accs.append(r["accuracy"])
            lats.append(r.get("latency_ms", np.nan))
    rows_arr = np.array(rows, dtype=np.int64).reshape(-1, lay.n_columns)
    pred.fit(rows_arr, np.array(accs), np.array(lats, dtype=float))

    def score(x: np.ndarray) -> np.ndarray:
        p = pred.predict(x)
        ok = budget.inside({k: v for k, v in p.items() if k != "accuracy_sd"})
        return np.where(ok, p["accuracy"], -np.inf)

    objectives = ["accuracy", *[k for k in budget.max_costs if k in pred.costs.metrics]]
    top, scores = pred.search(score, objectives, np.random.default_rng(0), seeds=rows_arr,
                              exclude=set(row_keys(rows_arr)) | seen, n_random=2000,
                              n_scalarized=600, rounds=5)
    if not len(top) or not np.isfinite(scores[0]):
        answer.notes.append("the predictor finds no recipe not run yet inside this budget")
        return
    p = pred.predict(top[:1])
    mean, sd = float(p["accuracy"][0]), float(p["accuracy_sd"][0])
    recipe = lay.decode(top[0])
    answer.candidate = {
        "recipe": recipe, "summary": Recipe.from_dict(recipe).summary(list(lay.blocks), shown_axes(blocks)),
        "accuracy": mean, "accuracy_sd": sd,
        "accuracy_interval": [max(0.0, mean - Z95 * sd), min(1.0, mean + Z95 * sd)],
        **{k: float(p[k][0]) for k in pred.costs.metrics},
        "trained_on": pred.accuracy.trained_on}
