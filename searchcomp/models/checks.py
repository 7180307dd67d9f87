"""Every check that needs only the space file and the architecture, run before any work.

A search can spend an hour training its base before its first trial; an input that cannot
work must be refused before that: the files the space names, the model on fresh weights (a
forward pass), the blocks and every allowed choice against their layers, the seed
configurations and the head. ``inspect`` and ``run`` both start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from searchcomp.config import Space
from searchcomp.data import check_source
from searchcomp.errors import SearchcompError
from searchcomp.models.blocks import Block, find_blocks, find_head
from searchcomp.models.factory import build_model, check_forward, load_checkpoint


@dataclass
class Architecture:
    """The checked architecture (fresh weights), its blocks and its head."""

    model: nn.Module
    blocks: list[Block]
    head_name: str


def check_inputs(space: Space) -> Architecture:
    """Check everything ``space`` names that needs no training and no download; raises a
    :class:`~searchcomp.errors.SearchcompError` naming the field at fault."""
    check_source(space.data)
    model = build_model(space.model).eval()
    if space.base.source == "checkpoint":
        path = Path(space.base.path or "")
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise SearchcompError(f"checkpoint {path} {what}", field="base.path")
        load_checkpoint(model, path)  # that it fits the architecture, too
    check_forward(model, space.model)
    blocks = find_blocks(model, space)
    head_name, _ = find_head(model, space, blocks)
    return Architecture(model, blocks, head_name)
