"""Dotted field paths (``blocks.per_block.layer1.*.prune``) and the lines they sit on."""

from __future__ import annotations

from typing import Any


def split_field(field: str) -> tuple:
    """``"search.seed_configs.0"`` -> ``("search", "seed_configs", 0)``."""
    parts: list[Any] = []
    for p in field.split("."):
        parts.append(int(p) if p.isdigit() else p)
    return tuple(parts)


def line_of(lines: dict[tuple, int], path: tuple) -> int | None:
    """The line of ``path``, or of its nearest parent that the file spells out."""
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None
