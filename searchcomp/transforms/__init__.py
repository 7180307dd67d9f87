"""Per-block choices as transforms, and the registry that names them.

A conv or head choice value is ``name`` or ``name:arg``; ``keep`` leaves the layer alone.
Adding a choice is one new module here that subclasses :class:`Transform` and calls
:func:`register`.
"""

from __future__ import annotations

from searchcomp.transforms.base import Applied, Transform

_REGISTRY: dict[str, Transform] = {}

KEEP = "keep"


def register(cls: type[Transform]) -> type[Transform]:
    """Class decorator: make ``cls.name`` available as a choice value."""
    if cls.name in _REGISTRY or cls.name == KEEP:
        raise ValueError(f"transform {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def names(target: str | None = None) -> list[str]:
    """Registered transform names, optionally only those for ``conv`` or ``head`` layers."""
    from torch import nn

    out = []
    for name, t in _REGISTRY.items():
        if target == "conv" and t.target is not nn.Conv2d:
            continue
        if target == "head" and t.target is not nn.Linear:
            continue
        out.append(name)
    return out


def parse_value(value: str) -> tuple[str, int | None]:
    """Split ``"meta:4"`` into ``("meta", 4)``; raise ValueError with a readable reason."""
    name, _, arg = str(value).partition(":")
    name = name.strip()
    if name == KEEP:
        if arg:
            raise ValueError("'keep' takes no argument")
        return KEEP, None
    if name not in _REGISTRY:
        raise ValueError(f"unknown choice {name!r}; known: {', '.join([KEEP, *_REGISTRY])}")
    t = _REGISTRY[name]
    if t.needs_arg and not arg:
        raise ValueError(f"{name!r} needs an argument, e.g. '{name}:4'")
    if not t.needs_arg and arg:
        raise ValueError(f"{name!r} takes no argument")
    if arg:
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"argument of {name!r} must be an integer, got {arg!r}") from None
        if n < 1:
            raise ValueError(f"argument of {name!r} must be >= 1, got {n}")
        return name, n
    return name, None


def get(name: str) -> Transform:
    """The registered transform called ``name``."""
    return _REGISTRY[name]


# Registration happens on import of each module.
from searchcomp.transforms import conv3d, meta, separable  # noqa: E402,F401

__all__ = ["Applied", "Transform", "register", "names", "parse_value", "get", "KEEP"]
