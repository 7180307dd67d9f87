"""Read a study back: every finished trial, the front, the greedy result, the hypervolume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.trial import TrialState

from searchcomp.config import OBJECTIVES, Space
from searchcomp.measure.intervals import Z95, accuracy_noise, spread
from searchcomp.search.front import hypervolume, hypervolume_interval, noise_front, pareto_front
from searchcomp.search.remeasure import QUIET_KEY, with_quiet
from searchcomp.search.states import CONFIRM_OF, is_repeat
from searchcomp.search.study import SKIPPED, open_study, resolve_storage, trial_row
from searchcomp.search.trial import with_feasibility

SHOWN = ("accuracy", "params", "size_mib", "latency_ms")
#: how sure each front point's figures are (see :mod:`searchcomp.measure.intervals`)
UNCERTAINTY = ("accuracy_low", "accuracy_high", "val_images", "accuracy_search",
               "accuracy_runs", "accuracy_std", "accuracy_min", "accuracy_max",
               "latency_p10_ms", "latency_p90_ms", "latency_under_load", "within_noise_of",
               "lead_within_noise_over")


@dataclass
class Results:
    """A study's outcome, ready for the table, JSON, the report and export."""

    study: str
    storage: str
    objectives: list[str]
    base: dict[str, Any]
    rows: list[dict[str, Any]]
    front: list[dict[str, Any]]
    greedy: dict[str, Any] | None
    hypervolume: float
    #: predicted vs measured latency of the trials (see :mod:`.checks`), when asked for
    latency_check: dict[str, Any] | None = None
    #: the trials of the plain Pareto front (``front`` also holds points within noise)
    pareto: list[int] | None = None
    #: the hypervolume's 95 % interval from the confirmation runs (None: no runs)
    hypervolume_interval: tuple[float, float] | None = None

    def counts(self) -> dict[str, int]:
        """Number of trials per state."""
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["state"]] = out.get(r["state"], 0) + 1
        return out

    def row(self, trial: int) -> dict[str, Any] | None:
        """The row of trial number ``trial``."""
        return next((r for r in self.rows if r["trial"] == trial), None)

    def to_json(self) -> dict[str, Any]:
        """The object ``front --json`` prints."""
        keys = list(dict.fromkeys([*SHOWN, *self.objectives]))

        def point(r: dict[str, Any]) -> dict[str, Any]:
            return {"trial": r["trial"], "recipe": (r.get("recipe") or {}).get("blocks", {}),
                    "head": (r.get("recipe") or {}).get("head", "keep"),
                    **{k: r.get(k) for k in keys}, "summary": r.get("summary"),
                    "latency_in_trial_ms": r.get("latency_in_trial_ms", r.get("latency_ms")),
                    "strategy": r.get("strategy"), "tag": r.get("tag"),
                    "anchor": bool(r.get("anchor")), "rung": r.get("rung"),
                    "rung_accuracy": r.get("rung_accuracy"),
                    **{k: r.get(k) for k in UNCERTAINTY},
                    "on_pareto_front": self.pareto is None or r["trial"] in self.pareto}

        return {"study": self.study, "storage": self.storage, "objectives": self.objectives,
                "base": self.base, "front": [point(r) for r in self.front],
                "greedy": self.greedy, "hypervolume": self.hypervolume,
                "hypervolume_interval": (None if self.hypervolume_interval is None
                                         else list(self.hypervolume_interval)),
                "trials": self.counts(),
                "latency_check": None if not self.latency_check else
                {k: v for k, v in self.latency_check.items() if k != "points"}}

    def to_text(self) -> str:
        """The front as a table, with the base and greedy rows."""
        arrows = " ".join(f"{o} {'max' if OBJECTIVES[o] == 'maximize' else 'min'}"
                          for o in self.objectives)
        c = self.counts()
        lines = [f"study {self.study}  ({self.storage})",
                 f"objectives: {arrows}",
                 *([f"MiB and latency: the artifact of runtime {self.base['runtime']}; "
                    f"latency by {self.base.get('latency_runtime')}"]
                   if self.base.get("runtime") else []),
                 f"{len(self.rows)} trials: " + ", ".join(f"{v} {k}" for k, v in c.items())
                 + _confirm_count(self.rows)
                 + f"; front: {len(self.front)} point(s); hypervolume {self.hypervolume:.4f}"
                 + (f" [{self.hypervolume_interval[0]:.4f}, {self.hypervolume_interval[1]:.4f}]"
                    if self.hypervolume_interval else ""),
                 *_rung_lines(self.rows),
                 ""]
        head = (f"{'trial':>6}  {'val acc':>7}  {'95 % interval':>15}  {'params':>9}  "
                f"{'MiB':>8}  {'latency ms':>10}  {'p10-p90':>13}  choices")
        lines.append(head)

        def fmt(label: str, r: dict[str, Any], note: str = "") -> str:
            lo, hi = r.get("accuracy_low"), r.get("accuracy_high")
            ci = f"[{lo:.4f},{hi:.4f}]" if lo is not None and hi is not None else "–"
            p10, p90 = r.get("latency_p10_ms"), r.get("latency_p90_ms")
            lat = f"{p10:.2f}-{p90:.2f}" if p10 is not None and p90 is not None else "–"
            load = "!" if r.get("latency_under_load") else " "
            return (f"{label:>6}  {r['accuracy']:7.4f}  {ci:>15}  {r['params'] / 1e6:7.3f} M  "
                    f"{r['size_mib']:8.3f}  {r['latency_ms']:10.3f}  {lat:>12}{load}  {note}")

        lines.append(fmt("base", self.base, "the base model, before any change"
                         + _in_trial(self.base)))
        for r in self.front:
            anchor = f"  [{r['tag']}]" if r.get("anchor") else ""
            lines.append(fmt(str(r["trial"]), r, (r.get("summary") or "") + anchor
                             + _in_trial(r)))
            lines += [f"{'':>8}{n}" for n in _notes(r)]
        if self.greedy:
            g = self.greedy
            if g.get("trial") is not None:
                lines.append(fmt("greedy", g, f"trial {g['trial']}: {g.get('swap')} on "
                                 f"{len(g['kept'])} block(s), threshold {g['threshold']:.4g}, "
                                 f"{g.get('form')}"))
            else:
                lines.append(f"{'greedy':>6}  no block could be swapped at threshold "
                             f"{g['threshold']}")
        from searchcomp.candidate import legend, used_axes
        from searchcomp.results.checks import describe_latency_check

        quiet = [r for r in [self.base, *self.front] if r.get("latency_quiet")]
        if quiet:
            lines += ["", f"latency: measured again quietly after the search ({len(quiet)} of "
                      f"{len(self.front) + 1} rows), one model at a time with no trial running; "
                      "(in trial X ms): the figure measured during the trial"]
        lines += ["", HOW_TO_READ]
        if any(r.get("latency_under_load") for r in [self.base, *self.front]):
            lines.append(LOAD_NOTE)
        lines.append("")
        check = describe_latency_check(self.latency_check)
        if check:
            lines.append(check)
        lines.append(legend(used_axes([r.get("recipe") for r in self.rows])))
        return "\n".join(lines)


HOW_TO_READ = (
    "val acc: validation accuracy (with confirmation runs, their mean); 95 % interval: of that "
    "accuracy, from the\nvalidation images (Wilson) and, with runs, the seeds' spread; p10-p90: "
    "of the timed runs. The front keeps\nevery point no other beats by more than this noise "
    "(~: dominated only within noise).")
LOAD_NOTE = ("!: timed under load (p90 / median > 1.25): its latency is too high; "
             "'searchcomp front SPACE --remeasure' measures the front again quietly")


def _rung_lines(rows: list[dict[str, Any]]) -> list[str]:
    """With the rungs strategy: how many candidates stopped at each rung (never on the
    front) and the rung every front point reached."""
    stopped: dict[int, int] = {}
    top = None
    for r in rows:
        if r.get("rung") is None:
            continue
        if r["state"] == "stopped":
            stopped[int(r["rung"])] = stopped.get(int(r["rung"]), 0) + 1
        elif r["state"] == "complete":
            top = max(int(r["rung"]), top or 0)
    if not stopped and top is None:
        return []
    at = ", ".join(f"{n} at rung {k}" for k, n in sorted(stopped.items())) or "none"
    return [f"rungs: stopped early (not on the front): {at}; complete trials reached rung "
            f"{top}, the full fine-tune"]


def _confirm_count(rows: list[dict[str, Any]]) -> str:
    n = sum(1 for r in rows if r.get(CONFIRM_OF) is not None)
    return f" ({n} of them confirmation runs, not counted)" if n else ""


def _notes(r: dict[str, Any]) -> list[str]:
    """The confirmation runs and the noise marks of a front row, one line each."""
    out = []
    if r.get("accuracy_runs"):
        out.append(f"runs: {r['accuracy_runs']} fine-tunes, mean {r['accuracy']:.4f} sd "
                   f"{r['accuracy_std']:.4f}, range {r['accuracy_min']:.4f}..."
                   f"{r['accuracy_max']:.4f} (the search's run: {r['accuracy_search']:.4f})")
    if r.get("within_noise_of"):
        out.append("~ dominated only within noise by trial(s) "
                   + ", ".join(map(str, r["within_noise_of"])))
    if r.get("lead_within_noise_over"):
        out.append("~ its accuracy lead over the cheaper trial(s) "
                   + ", ".join(map(str, r["lead_within_noise_over"])) + " is within noise")
    return out


def _in_trial(r: dict[str, Any]) -> str:
    """The in-trial latency, as a note, when the table shows the quiet one."""
    if not r.get("latency_quiet"):
        return ""
    return f"  (in trial {float(r['latency_in_trial_ms']):.3f} ms)"


def load_results(space: Space, *, storage: str | None = None,
                 study_name: str | None = None, check_latency: bool = False) -> Results:
    """Read the study of ``space`` (it must exist); ``check_latency`` compares the latency
    table's predictions with the measured trials, when the study has a table."""
    name = study_name or space.name
    study = open_study(space, storage=storage, study_name=name, load_only=True)
    objectives = list(study.user_attrs.get("objectives") or space.objectives)
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or t.user_attrs.get(SKIPPED):
            continue
        rows.append(trial_row(t, objectives))
    # quiet re-measurements (see searchcomp.search.remeasure) replace in-trial latencies
    figures = dict(study.user_attrs.get(QUIET_KEY) or {})
    rows = with_quiet(rows, figures)
    base = dict(study.user_attrs.get("base") or {})
    # a trial was judged feasible on its in-trial figures: judge it on the ones shown
    rows = [with_feasibility(r, space, base) for r in rows]
    # a repeated configuration reused an earlier result, a confirmation run repeats a point:
    # one point each, not two
    complete = [r for r in rows if r["state"] == "complete" and not is_repeat(r)]
    runs = confirmation_accuracies(rows)
    complete = [with_feasibility(with_runs(r, runs.get(r["trial"])), space, base)
                for r in complete]
    if base and figures.get("base"):
        base = with_quiet([{**base, "trial": "base"}], figures)[0]
        base.pop("trial")
    front = noise_front(complete, objectives)
    pareto = [r["trial"] for r in pareto_front(complete, objectives)]
    hv = hypervolume(complete, objectives, base) if base else 0.0
    hv_interval = None
    if base and any(len(v) > 1 for v in runs.values()):
        hv_interval = hypervolume_interval(complete, runs, objectives, base)
    greedy = None
    g = study.user_attrs.get("greedy")
    if g:
        greedy = {"threshold": g["threshold"], "form": g.get("form", "rebuild"),
                  "swap": g.get("swap"), "kept": g["kept"],
                  "trial": g["result_trial"],
                  "steps": len(g["steps"])}
        src = next((r for r in rows if r["trial"] == g["result_trial"]), None)
        src = src if src is not None else {**base, "recipe": {"blocks": {}, "head": "keep"}}
        greedy.update({k: src.get(k) for k in (*SHOWN, "flops")})
        greedy["recipe"] = (src.get("recipe") or {}).get("blocks", {})
    check = None
    if check_latency:
        from searchcomp.results.checks import latency_check

        check = latency_check(space, rows, name)
    return Results(name, resolve_storage(space, storage, name), objectives, base, rows, front,
                   greedy, hv, check, pareto, hv_interval)


def confirmation_accuracies(rows: list[dict[str, Any]]) -> dict[int, list[float]]:
    """Trial -> the accuracies of it and its complete confirmation runs (only trials that
    have some)."""
    extra: dict[int, list[float]] = {}
    for r in rows:
        if r.get(CONFIRM_OF) is not None and r["state"] == "complete" and "accuracy" in r:
            extra.setdefault(int(r[CONFIRM_OF]), []).append(float(r["accuracy"]))
    originals = {r["trial"]: r for r in rows if r["trial"] in extra and "accuracy" in r}
    return {n: [float(originals[n]["accuracy"]), *v] for n, v in extra.items()
            if n in originals}


def with_runs(row: dict[str, Any], accuracies: list[float] | None) -> dict[str, Any]:
    """``row`` with the mean of its runs as its accuracy (the search's own figure kept as
    ``accuracy_search``), their spread, and the 95 % interval of that mean."""
    if not accuracies or len(accuracies) < 2:
        return row
    s = spread(accuracies)
    out = {**row, "accuracy_search": row["accuracy"], "accuracy": s.mean,
           "accuracy_runs": s.runs, "accuracy_std": s.std, "accuracy_min": s.low,
           "accuracy_max": s.high}
    half = Z95 * accuracy_noise(out)
    out["accuracy_low"], out["accuracy_high"] = max(0.0, s.mean - half), min(1.0, s.mean + half)
    return out
