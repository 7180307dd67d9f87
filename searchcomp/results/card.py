"""The model card of an export (``card.md``): the written file against the base, both measured
on the files, with what the search had measured and the int8 scheme."""

from __future__ import annotations

from typing import Any

from searchcomp.deploy.formats import DEQUANT
from searchcomp.measure import MIN_RUNS


def with_ci(figures: dict[str, Any], split: str) -> str:
    """An accuracy of the card with its 95 % interval."""
    acc, ci = figures[f"{split}_accuracy"], figures.get(f"{split}_accuracy_interval")
    return f"{acc:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    e, b, s, m = card["exported"], card["base"], card["search"], card["measure"]
    what = f"trial {card['trial']}"
    rows = [("test accuracy (the file)", with_ci(e, "test"), with_ci(b, "test")),
            ("validation accuracy (the file)", with_ci(e, "val"), with_ci(b, "val")),
            ("params", f"{e['params']:,}", f"{b['params']:,}"),
            (f"file MiB ({card['file']})", f"{e['file_mib']:.4f}", f"{b['file_mib']:.4f}"),
            ("latency ms", f"{e['latency_ms']:.3f}", f"{b['latency_ms']:.3f}")]
    if s.get("size_mib") is not None:
        agreement = (f"The file is exactly the trial's size_mib ({e['file_bytes']:,} bytes)."
                     if card["same_artifact_as_search"] and card["size_mib_agreement"] == 0
                     else f"The file is {100 * card['size_mib_agreement']:+.2f}% off the "
                          f"trial's size_mib ({s['runtime']} artifact).")
        searched = (f"- Search-time figures of {what} ({s['runtime']}): validation accuracy "
                    f"{s['accuracy']:.4f}, size_mib {s['size_mib']:.4f}, latency "
                    f"{s['latency_ms']:.3f} ms ({s['latency_runtime']}). {agreement}")
    else:
        searched = f"- {what} has no search-time figures."
    flag = "**Accuracy gap:** " if card["accuracy_gap_flag"] else "- Accuracy gap: "
    lines = [f"# {card['study']} {what} ({card['format']})", "",
             f"| | exported ({what}) | base |", "|---|---:|---:|",
             *[f"| {k} | {x} | {y} |" for k, x, y in rows], "",
             f"- Accuracies: measured by running the written files: the held-out test split "
             f"({card['test_split']['images']} {card['test_split']['dataset']} images) and "
             f"the validation split ({card['val_split']['images']} images) the search chose on; "
             "[low, high]: the 95 % Wilson interval of each from its number of images.",
             f"- Latency: {card['runtime']}; batch {m['batch_size']}, median of "
             f"{max(m['runs'], MIN_RUNS)} runs after {m['warmup']} warm-up; the base was "
             f"written in the same format and measured the same way. {DEQUANT[card['format']]}",
             searched,
             f"{flag}{card['accuracy_gap_note'] or 'no trial accuracy to compare'}.",
             f"- Weights: {card['weights']}"
             + (f"; then fine-tuned {card['finetune_epochs']:g} more epoch(s)"
                if card["finetune_epochs"] else ""),
             f"- Quantized tensors by bit width: {card['quantized_tensors'] or 'none (float)'}",
             *_scheme_lines(card.get("int8_scheme")),
             "", "## Recipe", "", f"`{card['summary']}`", "",
             "| block | choices |", "|---|---|",
             *[f"| {blk} | {', '.join(f'{k} {v}' for k, v in ch.items())} |"
               for blk, ch in card["recipe"]["blocks"].items()],
             f"| head | {card['recipe']['head']} |", "", "## Use", "", "```python",
             "import searchcomp", "", "model = searchcomp.load(\"THIS_FOLDER\")  # eval mode",
             "```", "",
             f"Input: float32 N x {' x '.join(map(str, card['input']['shape']))}, each channel "
             f"normalised with mean {card['input']['normalize']['mean']} and std "
             f"{card['input']['normalize']['std']} (of images scaled to [0, 1]; "
             f"{card['input']['normalize'].get('kind', 'dataset')} statistics).", ""]
    return "\n".join(lines)


def _scheme_lines(scheme: dict[str, Any] | None) -> list[str]:
    """The card's int8 scheme: the choice and, when the study measured it, the table."""
    if not scheme:
        return []
    from searchcomp.deploy.schemes import format_scheme_table

    out = [f"- int8 scheme: {scheme['reason']}"]
    if scheme.get("record") and scheme["record"].get("rows"):
        out += ["", "```text", *format_scheme_table(scheme["record"]), "```", ""]
    return out
