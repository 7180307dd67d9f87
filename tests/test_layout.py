"""The package tree is the architecture: layers import downwards only, the light entry points
stay light, and no module but its own names a particular choice."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from searchcomp import choices

from .conftest import ROOT

PACKAGE = ROOT / "searchcomp"

#: the data flow, bottom to top: a module may import its own layer and the ones below
LAYERS = [
    ("searchcomp.errors", "searchcomp.config", "searchcomp.console"),
    ("searchcomp.compute",),
    ("searchcomp.data",),
    ("searchcomp.train",),
    ("searchcomp.choices",),
    ("searchcomp.models",),
    ("searchcomp.candidate",),
    ("searchcomp.deploy",),
    ("searchcomp.measure",),
    ("searchcomp.predict",),
    ("searchcomp.search",),
    ("searchcomp.results", "searchcomp.overview"),
    ("searchcomp.cli", "searchcomp.__main__"),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _rank(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return i
    return None


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every searchcomp module ``path`` imports, at any depth (function-level included)."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
            out.append((node.module, node.lineno))
    return [(m, n) for m, n in out if m.startswith("searchcomp.")]


def test_every_module_has_a_layer():
    unplaced = [_module_name(p) for p in PACKAGE.rglob("*.py")
                if _module_name(p) != "searchcomp" and _rank(_module_name(p)) is None]
    assert not unplaced, f"add these modules to LAYERS: {unplaced}"


def test_layers_import_downwards_only():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        mine = _rank(me)
        if mine is None:  # the package __init__: the public API, lazily importing any layer
            continue
        for target, line in _imports(path):
            theirs = _rank(target)
            if theirs is not None and theirs > mine:
                wrong.append(f"{path.relative_to(ROOT)}:{line} {me} imports {target}")
    assert not wrong, "\n".join(wrong)


def _fresh_import(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


_REPORT = ("import sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
           "{'torch', 'torchvision', 'optuna', 'torch_pruning', 'ray', 'plotly', 'onnx', "
           "'onnxruntime', 'optuna_dashboard'})))")


def test_reading_a_space_file_imports_neither_torch_nor_optuna():
    got = _fresh_import("import searchcomp; searchcomp.load_space('spaces/resnet50.yaml'); "
                        + _REPORT)
    assert got == []


def test_the_torch_layers_import_no_search_machinery():
    got = _fresh_import("import searchcomp.data, searchcomp.train, searchcomp.choices, "
                        "searchcomp.models, searchcomp.candidate, searchcomp.deploy.load, "
                        "searchcomp.measure; searchcomp.choices.names('conv'); " + _REPORT)
    assert "torch" in got
    assert not {"optuna", "torch_pruning", "ray", "plotly", "optuna_dashboard"} & set(got)


def test_the_search_imports_no_reporting_or_ray():
    got = _fresh_import("import searchcomp.search; " + _REPORT)
    assert "optuna" in got and not {"plotly", "ray", "optuna_dashboard"} & set(got)


def _string_constants(path: Path) -> list[tuple[str, int]]:
    """String literals of ``path``, leaving out docstrings and ``device=...`` arguments (the
    ``meta`` device is not the ``meta`` choice)."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg == "device":
            skip.add(id(node.value))
    return [(n.value, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def test_no_module_but_its_own_names_a_choice():
    spellings: dict[str, Path] = {}
    for target in ("conv", "head"):
        for c in choices.all_choices(target):
            own = Path(sys.modules[type(c).__module__].__file__)
            for name in (c.name, *c.aliases):
                spellings[name] = own
    assert {"separable", "separable_bn", "conv3d", "meta", "pyramid"} <= set(spellings)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for value, line in _string_constants(path):
            name = value.split(":", 1)[0]
            if name in spellings and path != spellings[name]:
                found.append(f"{path.relative_to(ROOT)}:{line} {value!r}")
    assert not found, "choice names outside their own module:\n" + "\n".join(found)


def test_no_module_but_its_own_names_an_added_axis():
    """A new choice axis is one file: ``width`` (an axis beyond the built-in conv, prune and
    bits, which the build order and the deployment code know by name) appears in no other
    module of the package; everything else iterates over the registry."""
    from searchcomp.choices import axes

    added = [a for a in axes.all_axes() if not a.always]
    assert "width" in {a.name for a in added}
    found = []
    for a in added:
        own = Path(sys.modules[type(a).__module__].__file__)
        for path in sorted(PACKAGE.rglob("*.py")):
            if path != own:
                found += [f"{path.relative_to(ROOT)}:{line} {v!r}"
                          for v, line in _string_constants(path) if v == a.name]
    assert not found, "axis names outside their own module:\n" + "\n".join(found)


@pytest.mark.parametrize("limit", [400])
def test_modules_stay_short(limit):
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > limit}
    assert not long, f"split these modules (over {limit} lines): {long}"
