"""The choice registry: which ``conv`` and ``head`` values exist, and what each one is.

Built-in choices are the modules of :mod:`searchcomp.choices.layers`, found by listing that
package (so a new one is one new file there); third-party choices come from the
``searchcomp.choices`` entry-point group of installed packages, so ``pip install`` of a
plugin adds a choice without a fork. Both are loaded on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from importlib.metadata import entry_points

from searchcomp.choices.base import CONV_KINDS, TARGETS, Choice
from searchcomp.config import KEEP, split_value

ENTRY_POINT_GROUP = "searchcomp.choices"

_REGISTRY: dict[tuple[str, str], Choice] = {}
_ALIASES: dict[tuple[str, str], str] = {}
_LOADED = False


def register(cls: type[Choice]) -> type[Choice]:
    """Class decorator: make ``cls`` available as a ``conv`` or ``head`` value."""
    if cls.target not in TARGETS:
        raise ValueError(f"choice {cls.__name__}: target must be one of {TARGETS}, "
                         f"got {cls.target!r}")
    if cls.target == "conv" and (not cls.kinds or set(cls.kinds) - set(CONV_KINDS)):
        raise ValueError(f"choice {cls.__name__}: kinds must be among {CONV_KINDS}, "
                         f"got {cls.kinds!r}")
    for spelling in (cls.name, *cls.aliases):
        key = (cls.target, spelling)
        if spelling == KEEP or (key in _REGISTRY and type(_REGISTRY[key]) is not cls) or (
                key in _ALIASES and _ALIASES[key] != cls.name):
            raise ValueError(f"{cls.target} choice {spelling!r} is already registered")
    codes = {c.code for (t, _), c in _REGISTRY.items() if t == cls.target and type(c) is not cls}
    if len(cls.code) != 1 or cls.code in codes or cls.code == ".":
        raise ValueError(f"{cls.target} choice {cls.name!r}: code {cls.code!r} must be one "
                         "character, not '.', and unique among its target's choices")
    _REGISTRY[(cls.target, cls.name)] = cls()
    for alias in cls.aliases:
        _ALIASES[(cls.target, alias)] = cls.name
    return cls


def _load() -> None:
    """Import the built-in choice modules and the installed plugins, once."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from searchcomp.choices import layers

    for info in pkgutil.iter_modules(layers.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{layers.__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not take the tool down silently
            print(f"searchcomp: cannot load choice plugin {ep.name!r} ({ep.value}): {e}",
                  file=sys.stderr)
            continue
        if isinstance(obj, type) and issubclass(obj, Choice) and \
                (obj.target, obj.name) not in _REGISTRY:
            register(obj)


def names(target: str) -> list[str]:
    """Registered choice names for ``target`` (``conv`` or ``head``), in registration order."""
    _load()
    return [n for (t, n) in _REGISTRY if t == target]


def all_choices(target: str) -> list[Choice]:
    """The registered choices of ``target``."""
    _load()
    return [c for (t, _), c in _REGISTRY.items() if t == target]


def parse_value(value: str, target: str = "conv") -> tuple[str, int | None]:
    """``"meta:4"`` -> ``("meta", 4)`` for ``target``; aliases resolve to the canonical name.
    Raises ValueError with a readable reason (unknown name, missing or extra argument)."""
    name, arg = split_value(value)
    if name == KEEP:
        return KEEP, None
    _load()
    name = _ALIASES.get((target, name), name)
    if (target, name) not in _REGISTRY:
        known = ", ".join([KEEP, *names(target)])
        raise ValueError(f"unknown {target} choice {name!r}; {target} choices: {known}")
    c = _REGISTRY[(target, name)]
    if c.needs_arg and arg is None:
        raise ValueError(f"{name!r} needs an argument, e.g. '{name}:4'")
    if not c.needs_arg and arg is not None:
        raise ValueError(f"{name!r} takes no argument")
    if arg is not None and arg < 1:
        raise ValueError(f"argument of {name!r} must be >= 1, got {arg}")
    return name, arg


def get(name: str, target: str = "conv") -> Choice:
    """The registered choice ``name`` (or an alias) of ``target``."""
    _load()
    name = _ALIASES.get((target, name), name)
    try:
        return _REGISTRY[(target, name)]
    except KeyError:
        raise KeyError(f"no {target} choice {name!r}; known: {', '.join(names(target))}") from None


def code(value: str, target: str = "conv") -> str:
    """The summary character of a value: ``.`` for keep, else the choice's code."""
    name, _ = parse_value(value, target)
    return "." if name == KEEP else get(name, target).code


def legend(target: str = "conv") -> str:
    """``". keep, S separable, ..."``: the summary characters of ``target``'s choices."""
    return ", ".join([f". {KEEP}", *(f"{c.code} {c.name}" for c in all_choices(target))])


def channel_multiple(value: str, target: str = "conv") -> int:
    """Channel multiple pruning must keep so the value still applies afterwards."""
    name, arg = parse_value(value, target)
    return 1 if name == KEEP else get(name, target).channel_multiple(arg)
