"""`searchcomp profile`: fill the study's sensitivity table and latency table.

Every row is the candidate with one change (one block's value of one axis — a conv value,
prune ratio, bit width, stage width — or a head value) built from the base exactly as a trial builds it, recovered for
``profile.steps`` fine-tune steps with the same seed for every row, and scored on the
validation split; the reference row is the unchanged base after the same recovery. Rows are
stored as they finish (Ctrl-C loses at most the row running), and only missing rows run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from searchcomp.candidate import Recipe
from searchcomp.choices import axes
from searchcomp.choices.actquant import calibrate_activations
from searchcomp.config import Space
from searchcomp.errors import ChoiceError
from searchcomp.predict.assemble import Tables, open_tables
from searchcomp.predict.sensitivity import (
    REFERENCE,
    SECTION,
    accuracy_context,
    profile_seed,
    row_key,
    wanted_rows,
)
from searchcomp.search.trial import TrialContext, prepare
from searchcomp.train import DivergedError, evaluate, finetune


@dataclass
class ProfileResult:
    """A space's profile: what ``profile`` prints and ``report`` draws."""

    study: str
    tables: Tables
    base: dict[str, Any]
    #: rows computed by this call (0: everything was reused)
    computed: int = 0
    seconds: float = 0.0

    def rows(self) -> list[dict[str, Any]]:
        """One dict per single change (reference first), with its accuracy change, output
        error and exact cost changes, and its latency change from the latency table."""
        t = self.tables
        lat = t.latency.table(t.layout)
        neutral = t.layout.neutral_row()
        lat0 = float(lat.predict(neutral[None])["latency_ms"][0])
        out = []
        for block, choice, value in wanted_rows(t.layout, t.head_name):
            row = t.sensitivity.rows.get((block, choice, value))
            r: dict[str, Any] = {"block": block or "base", "choice": choice, "value": value,
                                 "accuracy": None if row is None else row["accuracy"],
                                 "accuracy_change": None, "output_error": None}
            if row is not None:
                r["accuracy_change"] = t.sensitivity.delta(block, choice, value) \
                    if block else 0.0
                r["output_error"] = row.get("output_error")
                r["seconds"] = row.get("seconds")
            recipe = single_change(block, choice, value)
            cost = t.shapes.delta(recipe)
            ms = float(lat.predict(t.layout.encode(recipe.to_dict())[None])["latency_ms"][0]) \
                - lat0
            r.update({"params_change": int(cost["params"]),
                      "size_mib_change": float(cost["size_mib"]),
                      "flops_change": int(cost["flops"]),
                      "latency_ms_change": None if ms != ms else float(ms)})
            out.append(r)
        return out


def single_change(block: str, choice: str, value: Any) -> Recipe:
    """The recipe of one profile row (the reference: the base)."""
    if (block, choice, value) == REFERENCE:
        return Recipe()
    if choice == "head":
        return Recipe(head=value)
    return Recipe({block: {choice: value}})


def _error_of(init_errors: dict[str, float], block: Any, choice: str, name: str) -> float:
    """The output error a single change leaves: the worst replaced layer's for an axis that
    replaces layers (conv), else the block's (``<block>:<axis>``)."""
    if choice == "head":
        return init_errors.get(name, 0.0)
    replaced = [layer for layer, effect in axes.get(choice).effects(block).items()
                if effect == "replace"] if block is not None else []
    if replaced:
        return max((init_errors[c] for c in replaced if c in init_errors), default=0.0)
    return init_errors.get(f"{name}:{choice}", 0.0)


def profile_row(ctx: TrialContext, block: str, choice: str, value: Any) -> dict[str, Any]:
    """Build, recover and score one single-change candidate (the reference: the base)."""
    space = ctx.space
    seed = profile_seed(space)
    recipe = single_change(block, choice, value)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    built = ctx.build(recipe)
    steps = space.profile.steps
    if steps:
        cfg = space.finetune.model_copy(update={"steps": steps, "min_accuracy": None})
        finetune(built.model, ctx.base, ctx.splits.train.reseeded(seed), ctx.splits.val, cfg,
                 compute=ctx.compute, teacher_logits=ctx.teacher_logits)
        calibrate_activations(built.model, ctx.calib)  # as a trial does after its fine-tune
    accuracy = evaluate(built.model, ctx.splits.val, ctx.compute)
    b = next((b for b in ctx.blocks if b.name == block), None)
    return {"block": block, "choice": choice, "value": value, "accuracy": accuracy,
            "output_error": _error_of(built.init_errors, b, choice, block),
            "steps": steps, "seed": seed, "seconds": time.perf_counter() - t0}


def fill_profile(ctx: TrialContext, study_name: str, *, log: Callable[[str], None] = print,
                 progress: bool = True) -> tuple[Tables, int]:
    """Measure the latency table and compute every missing sensitivity row of ``ctx``'s
    space into the study's profile file; returns the tables and how many rows ran. Progress
    is bars on a terminal (when ``progress``), else one line per row through ``log``."""
    from searchcomp import console

    space = ctx.space
    bar = None

    def on_latency(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            log(f"profile: timing {total} block configuration(s) in {space.measure.runtime} "
                f"({space.measure.threads} thread(s), median of {space.measure.runs} runs)")
            bar = console.bar(total, "latency table", "config", enabled=progress,
                              leave=False)
        bar.update(1)

    tables = open_tables(space, ctx.base, ctx.blocks, ctx.head_name, study_name,
                         measure_latency=True, progress=on_latency,
                         int8_scheme=ctx.int8_scheme.name if ctx.int8_scheme else None,
                         calib=ctx.calib)
    if bar is not None:
        bar.close()
    actx = accuracy_context(space)
    todo = [r for r in wanted_rows(tables.layout, ctx.head_name)
            if tables.store.get(SECTION, row_key(actx, *r)) is None]
    if todo:
        log(f"profile: {len(todo)} single-change row(s) to compute "
            f"({len(wanted_rows(tables.layout, ctx.head_name)) - len(todo)} reused), "
            f"{space.profile.steps} recovery step(s) each")
    with console.bar(len(todo), "profile", "row", enabled=progress) as rows_bar:
        for i, (block, choice, value) in enumerate(todo, 1):
            rows_bar.set_postfix_str(f"{block or 'base'} {choice} {value}", refresh=False)
            try:
                row = profile_row(ctx, block, choice, value)
            except (ChoiceError, DivergedError) as e:  # the prior leaves it unknown
                log(f"profile: {block or 'base'} {choice}={value} failed ({e}); left out")
            else:
                tables.store.put(SECTION, row_key(actx, block, choice, value), row)
                if not console.shows(rows_bar):
                    what = f"{block} {choice}={value}" if block else "the reference (base)"
                    log(f"profile: row {i}/{len(todo)}, {what}: val acc {row['accuracy']:.4f} "
                        f"in {row['seconds']:.1f} s")
            rows_bar.update(1)
    return tables.reload(space), len(todo)


def profile_space(space: Space, *, study_name: str | None = None,
                  log: Callable[[str], None] = print, progress: bool = True,
                  device: str | None = None) -> ProfileResult:
    """What ``searchcomp profile`` does: prepare the base, fill the tables, return them.
    ``device`` overrides the space's ``device`` for the recoveries."""
    t0 = time.perf_counter()
    name = study_name or space.name
    ctx = prepare(space, progress=progress, log=log, study_name=name, device=device)
    tables, computed = fill_profile(ctx, name, log=log, progress=progress)
    return ProfileResult(name, tables, ctx.base_metrics, computed, time.perf_counter() - t0)


def read_profile(space: Space, study_name: str | None = None) -> ProfileResult | None:
    """The stored profile of the study (nothing is measured or trained: the architecture is
    built with fresh weights for its shapes), or None when it has no row yet."""
    from searchcomp.models import build_model, find_blocks, find_head

    model = build_model(space.model).eval()
    blocks = find_blocks(model, space)
    head_name, _ = find_head(model, space)
    name = study_name or space.name
    tables = open_tables(space, model, blocks, head_name, name)
    if not tables.sensitivity.rows:
        return None
    return ProfileResult(name, tables, {})
