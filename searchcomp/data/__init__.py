"""Images in: datasets through torchvision or a user factory (:mod:`.readers`), what every
image goes through (:mod:`.transforms`), streaming by a DataLoader (:mod:`.stream`) and the
deterministic subsets a search uses (:mod:`.splits`)."""

from searchcomp.data.readers import Pools, check_source, default_root, load_pools, read_idx
from searchcomp.data.splits import Batches, Splits, load_splits
from searchcomp.data.transforms import augmentation, image_transform

__all__ = ["Batches", "Pools", "Splits", "augmentation", "check_source", "default_root",
           "image_transform", "load_pools", "load_splits", "read_idx"]
