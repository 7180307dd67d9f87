"""The registry of choice axes: ``conv``, ``prune``, ``bits`` and ``width`` (one module each
here), and any installed plugin's (the ``searchcomp.axes`` entry-point group).

Every module of this package not starting with ``_`` is loaded on first use, so a new axis is
one new file; nothing else in the package names it (``tests/test_layout.py`` checks that).
Loading imports no torch: an axis imports what it needs inside its methods.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from importlib.metadata import entry_points
from typing import Any

from searchcomp.choices.axes._base import PHASES, Axis, BuildState, Resizer

ENTRY_POINT_GROUP = "searchcomp.axes"

_REGISTRY: dict[str, Axis] = {}
_LOADED = False


def register(cls: type[Axis]) -> type[Axis]:
    """Class decorator: make ``cls`` a choice axis under ``cls.name``."""
    if cls.phase not in PHASES:
        raise ValueError(f"axis {cls.__name__}: phase must be one of {PHASES}, got {cls.phase!r}")
    if cls.name in ("head", "") or (cls.name in _REGISTRY
                                    and type(_REGISTRY[cls.name]) is not cls):
        raise ValueError(f"axis {cls.name!r} is already registered (or reserved)")
    _REGISTRY[cls.name] = cls()
    return cls


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    pkg = sys.modules[__name__]
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not take the tool down silently
            print(f"searchcomp: cannot load axis plugin {ep.name!r} ({ep.value}): {e}",
                  file=sys.stderr)
            continue
        if isinstance(obj, type) and issubclass(obj, Axis) and obj.name not in _REGISTRY:
            register(obj)


def all_axes() -> list[Axis]:
    """Every registered axis, in :attr:`Axis.order`."""
    _load()
    return sorted(_REGISTRY.values(), key=lambda a: (a.order, a.name))


def names() -> list[str]:
    """The registered axis names, in order."""
    return [a.name for a in all_axes()]


def get(name: str) -> Axis:
    """The axis called ``name``; KeyError naming the known ones otherwise."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no choice axis {name!r}; axes: {', '.join(names())}") from None


def neutral(name: str) -> Any:
    """The neutral value of axis ``name``."""
    return get(name).neutral


def in_phase(phase: str) -> list[Axis]:
    """The axes build applies in ``phase``, in order."""
    return [a for a in all_axes() if a.phase == phase]


def shown(values: dict[str, Any] | None = None) -> list[Axis]:
    """The axes a summary line shows: the ``always`` ones, and any other with a non-neutral
    value in ``values`` (axis -> value, or axis -> allowed values)."""
    out = []
    for a in all_axes():
        v = (values or {}).get(a.name)
        used = v is not None and (any(x != a.neutral for x in v) if isinstance(v, (list, tuple))
                                  else v != a.neutral)
        if a.always or used:
            out.append(a)
    return out


__all__ = ["ENTRY_POINT_GROUP", "PHASES", "Axis", "BuildState", "Resizer", "all_axes", "get",
           "in_phase", "names", "neutral", "register", "shown"]
