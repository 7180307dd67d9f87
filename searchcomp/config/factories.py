"""Importing a user's factory ``package.module:function`` (a model or a dataset)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from searchcomp.errors import SearchcompError


def import_factory(spec: str, field: str) -> Callable[..., Any]:
    """Import ``pkg.mod:fn``; the current directory is searched too, as with ``python -m``.
    An import that fails is a user error naming ``field``."""
    mod_name, fn_name = spec.split(":")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise SearchcompError(f"cannot import {spec!r}: {e}", field=field) from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    if not callable(fn):
        raise SearchcompError(f"{spec!r} is a {type(fn).__name__}, not a function", field=field)
    return fn


def factory_digest(spec: str) -> str | None:
    """Hash of the source file of factory ``pkg.mod:fn`` (None if it cannot be found), so
    editing a model or dataset factory invalidates what was cached from it."""
    if ":" not in spec:
        return None
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec(spec.split(":")[0])
    except (ImportError, ValueError):
        return None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    if found is None or not found.origin or not Path(found.origin).is_file():
        return None
    return hashlib.sha256(Path(found.origin).read_bytes()).hexdigest()[:16]
