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
    """The line of ``path``, or of its nearest parent that the file spells out. A key may
    hold dots (a ``per_block`` glob such as ``layer1.*``): every way of joining adjacent
    parts back is tried, and the deepest spelled-out one wins."""
    best, depth = None, -1
    for joined in _joinings(path):
        for n in range(len(joined), -1, -1):
            if joined[:n] in lines:
                used = sum(len(str(p).split(".")) for p in joined[:n])
                if used > depth:
                    best, depth = lines[joined[:n]], used
                break
    return best


def _joinings(path: tuple) -> list[tuple]:
    """``path`` and every tuple made by joining runs of its adjacent parts with dots."""
    if len(path) > 8:
        return [path]
    out = []
    for mask in range(2 ** max(0, len(path) - 1)):
        parts, cur = [], [path[0]] if path else []
        for i in range(1, len(path)):
            if mask >> (i - 1) & 1:
                cur.append(path[i])
            else:
                parts.append(cur)
                cur = [path[i]]
        if cur:
            parts.append(cur)
        out.append(tuple(p[0] if len(p) == 1 else ".".join(map(str, p)) for p in parts))
    return out
