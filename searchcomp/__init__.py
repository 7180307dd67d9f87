"""searchcomp: multi-objective compression search for PyTorch CNNs.

The public API, in the order of the data flow::

    import searchcomp as sc

    space = sc.load_space("spaces/resnet18-fashion.yaml")   # YAML -> typed config (no torch)
    summary = sc.run_search(space)                          # base, trials, Optuna study
    results = sc.load_results(space)                        # the front, the base, every trial
    sc.export_trial(space, results.front[0]["trial"], "exported")
    model = sc.load("exported")                             # torch only (+ onnxruntime for ONNX)

``Recipe`` + ``build`` turn a base model and per-block choices into a candidate, and
``measure`` gives its params, MiB, FLOPs and latency. Attributes are imported on first use,
so ``import searchcomp`` and ``load_space`` pull in neither torch nor Optuna.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from searchcomp.config import Space, load_space
from searchcomp.errors import ChoiceError, DataError, SearchcompError, SpaceError

__version__ = "0.1.0"

#: public name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "Recipe": "searchcomp.candidate",
    "build": "searchcomp.candidate",
    "measure": "searchcomp.measure",
    "Metrics": "searchcomp.measure",
    "inspect_space": "searchcomp.overview",
    "run_search": "searchcomp.search.api",
    "load_results": "searchcomp.results.study",
    "profile_space": "searchcomp.search.profile",
    "answer_budget": "searchcomp.results.budget",
    "Budget": "searchcomp.predict.budget",
    "export_trial": "searchcomp.results.export",
    "load": "searchcomp.deploy.load",
}

__all__ = ["Budget", "ChoiceError", "DataError", "Metrics", "Recipe", "SearchcompError",
           "Space", "SpaceError", "answer_budget", "build", "export_trial", "inspect_space",
           "load", "load_results", "load_space", "measure", "profile_space", "run_search"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'searchcomp' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from searchcomp.candidate import Recipe, build
    from searchcomp.deploy.load import load
    from searchcomp.measure import Metrics, measure
    from searchcomp.overview import inspect_space
    from searchcomp.predict.budget import Budget
    from searchcomp.results.budget import answer_budget
    from searchcomp.results.export import export_trial
    from searchcomp.results.study import load_results
    from searchcomp.search.api import run_search
    from searchcomp.search.profile import profile_space
