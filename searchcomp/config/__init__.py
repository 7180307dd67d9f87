"""The space file: a YAML file parsed once into frozen, typed config objects.

Nothing here imports torch or Optuna, so reading and checking a space file is cheap; checks
that need the model (a glob that matches no block, a choice a layer cannot take) happen when
the model is built, and point at the same file and line.
"""

from searchcomp.config.devices import DEVICES, PRECISIONS, check_device
from searchcomp.config.loader import load_space, parse_override
from searchcomp.config.schema import (
    DATASETS,
    FLOAT_BITS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    KEEP,
    OBJECTIVES,
    SAMPLERS,
    SUPPORTED_BITS,
    BaseSourceConfig,
    BlocksConfig,
    ChoiceSet,
    ConstraintsConfig,
    DataConfig,
    DistillConfig,
    FinetuneConfig,
    MeasureConfig,
    ModelConfig,
    NormalizeStats,
    ProfileConfig,
    SearchConfig,
    Space,
    split_value,
)

__all__ = ["DATASETS", "DEVICES", "FLOAT_BITS", "IMAGENET_MEAN", "IMAGENET_STD",
           "KEEP", "OBJECTIVES", "PRECISIONS", "SAMPLERS", "SUPPORTED_BITS",
           "BaseSourceConfig", "BlocksConfig", "ChoiceSet", "ConstraintsConfig", "DataConfig",
           "DistillConfig", "FinetuneConfig", "MeasureConfig", "ModelConfig", "NormalizeStats",
           "ProfileConfig", "SearchConfig", "Space", "check_device", "load_space",
           "parse_override", "split_value"]
