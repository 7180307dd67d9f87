"""searchcomp: multi-objective compression search for PyTorch CNNs.

Typical use from Python::

    import searchcomp as sc

    space = sc.load_space("spaces/resnet18-fashion.yaml")
    print(sc.inspect_space(space).to_text())
"""

__version__ = "0.1.0"

from searchcomp.blocks import Block, find_blocks, find_head
from searchcomp.candidate import Built, Recipe, build
from searchcomp.data import Splits, load_splits
from searchcomp.errors import ChoiceError, DataError, SearchcompError, SpaceError
from searchcomp.export import export_trial, load
from searchcomp.metrics import Metrics, count_params, flops, latency_ms, measure, size_mib
from searchcomp.models import build_model
from searchcomp.overview import inspect_space
from searchcomp.space import Space, load_space

__all__ = [
    "Block", "Built", "ChoiceError", "DataError", "Metrics", "Recipe", "SearchcompError",
    "Space", "SpaceError", "Splits", "build", "build_model", "count_params", "find_blocks",
    "find_head", "flops", "inspect_space", "latency_ms", "load_space", "load_splits",
    "measure", "size_mib", "export_trial", "load",
]
