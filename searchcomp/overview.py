"""`searchcomp inspect`: what a space file means, without training anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from searchcomp.candidate import shown_axes
from searchcomp.choices import axes
from searchcomp.config import Space
from searchcomp.deploy.cpu import features_label
from searchcomp.models import (
    Block,
    check_inputs,
    describe_head,
    first_conv,
    head_candidates,
    input_shape,
    space_size,
)


@dataclass
class Overview:
    """Blocks, their choices, the size of the search space and the base model's metrics."""

    space: Space
    blocks: list[Block]
    head_name: str
    head_values: tuple[str, ...]
    space_size: int
    base: dict[str, Any]
    #: every layer a head choice could replace, with its shape, e.g. ``fc Linear 512->10``
    heads: tuple[str, ...] = ()
    #: the stride of a torchvision model's stem (``stride-1`` with ``small_input``)
    stem: str = ""
    #: onnxruntime-int8: the scheme setting, this CPU's kernel probe, the study's choice
    int8: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The object ``inspect --json`` prints."""
        return {
            "space": self.space.file,
            "study": self.space.name,
            "model": self.space.model.arch,
            "blocks": [{"name": b.name, "family": b.family, "convs": list(b.convs),
                        "choices": {a: list(b.allowed(a)) for a in shown_axes(self.blocks)},
                        "left_out": dict(b.dropped),
                        **({"stage": {a: {k: v for k, v in i.items() if k != "members"}
                                      for a, i in b.info.items()}} if b.info else {})}
                       for b in self.blocks],
            "head": {"name": self.head_name, "choices": {"head": list(self.head_values)},
                     "candidates": list(self.heads)},
            "normalize": _normalize_text(self.space),
            "space_size": self.space_size,
            "base": self.base,
            "int8": self.int8,
        }

    def to_text(self) -> str:
        """A readable table."""
        s, m = self.space, self.space.model
        stem = f", {self.stem} stem" if self.stem else ""
        lines = [f"space  {s.file}  (study {s.name})",
                 f"model  {m.arch}, {m.num_classes} classes, input {m.in_channels}x"
                 f"{m.image_size}x{m.image_size}{stem}",
                 f"data   {s.data.dataset}: train {s.data.train_size}, val {s.data.val_size}, "
                 f"test {s.data.test_size} (held out); normalised with "
                 f"{_normalize_text(s)}",
                 "", f"blocks ({len(self.blocks)})"]
        shown = shown_axes(self.blocks)
        rows = [("name", "family", "convs", *shown)]
        for b in self.blocks:
            rows.append((b.name, b.family,
                         ",".join(c[len(b.name) + 1:] or "self" for c in b.convs) or "-",
                         *(" ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                    for v in b.allowed(a)) for a in shown)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        lines += _left_out(self.blocks)
        lines += _stages(self.blocks)
        lines += [f"head   {self.head_name}: {' '.join(self.head_values)}",
                  f"       candidates: {', '.join(self.heads)}",
                  f"space  {self.space_size:,} candidates ({self.space_size:.3g})", ""]
        b = self.base
        lines.append(f"base   params {b['params']:,}   size {b['size_mib']:.2f} MiB   "
                     f"flops {b['flops'] / 1e6:,.1f} M   latency {b['latency_ms']:.2f} ms")
        runtime = b["latency_runtime"].split("; cpu")[0]  # the features get their own line
        lines.append(f"       size and latency: the {b['format']} file of runtime "
                     f"{s.measure.runtime}, run by {runtime}, batch {s.measure.batch_size}, "
                     f"median of {s.measure.runs} runs")
        feats = features_label(tuple(b["cpu_features"]) if b["cpu_features"] is not None
                               else None).removeprefix("cpu ")
        lines.append(f"cpu    {b['cpu_model']}; int8 speed depends on: {feats}")
        lines += _int8_lines(self.int8)
        lines.append(f"objectives  {', '.join(s.objectives)}")
        return "\n".join(lines)


def _int8_lines(int8: dict[str, Any] | None) -> list[str]:
    if not int8:
        return []
    from searchcomp.deploy.schemes import format_scheme_table

    probe = ", ".join(f"{n} {'exact' if ok else 'SATURATES'}"
                      for n, ok in int8["kernel_exact"].items())
    lines = [f"int8   scheme {int8['setting']}; this CPU's int8 kernels at the range's ends: "
             f"{probe}"]
    if int8["chosen"]:
        lines += [f"       {line}" for line in format_scheme_table(int8["chosen"])]
    elif int8["setting"] == "auto":
        lines.append("       chosen by measurement when the study is first prepared (run, "
                     "profile): the fastest scheme that keeps the base's accuracy")
    return lines


def _normalize_text(space: Space) -> str:
    norm = space.data.normalize
    if isinstance(norm, str):
        return f"{norm} statistics"
    return f"mean {list(norm.mean)} std {list(norm.std)}"


def _left_out(blocks: list[Block]) -> list[str]:
    """One line per default value some blocks left out: which blocks, and the first reason."""
    by_value: dict[str, list[Block]] = {}
    for b in blocks:
        for value in b.dropped:
            by_value.setdefault(value, []).append(b)
    lines = []
    for value, bs in by_value.items():
        names = ("every block" if len(bs) == len(blocks) and len(bs) > 1 else
                 ", ".join(b.name for b in bs[:4]) + (f" (+{len(bs) - 4})" if len(bs) > 4
                                                      else ""))
        lines.append(f"  left out: {value} on {names}: {bs[0].dropped[value]}")
    return lines


def _stages(blocks: list[Block]) -> list[str]:
    """One line per stage a stage-wide axis found: its blocks, set on the first."""
    lines = []
    for b in blocks:
        for a in axes.all_axes():
            info = b.info.get(a.name)
            if a.scope == "stage" and info and len(b.allowed(a.name)) > 1:
                lines.append(f"  stage of {b.name} ({a.name}): {info['channels']} channels "
                             f"shared by {', '.join(info['blocks'])}; root {info['root']}")
    return lines


def inspect_space(space: Space, progress: Callable[[str], None] | None = None) -> Overview:
    """Check every input (the files the space names too), build the base architecture (fresh
    weights: sizes and latency do not depend on them), find and check the blocks, and measure
    the base model. Trains and downloads nothing."""
    arch = check_inputs(space)
    model, blocks, head_name = arch.model, arch.blocks, arch.head_name
    heads = tuple(describe_head(n, m) + (" (head)" if n == head_name else "")
                  for n, m in head_candidates(model))

    from searchcomp.deploy.cpu import cpu_model
    from searchcomp.deploy.runtime import get_runtime
    from searchcomp.measure import measure
    from searchcomp.search.context import measure_device

    device = measure_device(space)
    if progress:
        progress(f"measuring the base model ({space.measure.runs} timed runs)...")
    mm = space.measure
    met = measure(model, input_shape(space.model), batch_size=mm.batch_size,
                  threads=mm.threads, runs=mm.runs, warmup=mm.warmup, runtime=mm.runtime,
                  device=device)
    base = {"params": met.params, "size_mib": met.size_mib, "flops": met.flops,
            "latency_ms": met.latency_ms, "latency_runtime": met.latency_runtime,
            "runtime": mm.runtime, "format": get_runtime(mm.runtime).format,
            "cpu_model": cpu_model(),
            "cpu_features": list(met.cpu_features) if met.cpu_features is not None else None}
    int8 = None
    if mm.runtime == "onnxruntime-int8":
        from searchcomp.search.int8_scheme import int8_overview

        int8 = int8_overview(space)
    return Overview(space, blocks, head_name, space.blocks.head,
                    space_size(blocks, space.blocks.head), base, heads, _stem(model, space),
                    int8)


def _stem(model, space: Space) -> str:
    """What stem the torchvision model got (a factory model keeps its own: empty)."""
    if ":" in space.model.arch:
        return ""
    found = first_conv(model)
    if found is None:
        return ""
    return f"stride-{found[1].stride[0]}"
