"""Images in: dataset readers (:mod:`.readers`) and the deterministic subsets a search uses
(:mod:`.splits`)."""

from searchcomp.data.readers import Pools, check_source, default_root, load_pools, read_idx
from searchcomp.data.splits import Batches, Splits, load_splits

__all__ = ["Batches", "Pools", "Splits", "check_source", "default_root", "load_pools", "load_splits", "read_idx"]
