"""The network: built from the space (torchvision or a user factory), its searchable blocks,
and the trained base every candidate starts from."""

from searchcomp.models.base import Base, cache_path, obtain_base, state_digest
from searchcomp.models.blocks import Block, find_blocks, find_head, space_size, spatial_convs
from searchcomp.models.checks import Architecture, check_inputs
from searchcomp.models.factory import (
    build_model,
    check_forward,
    input_shape,
    last_linear,
    load_checkpoint,
    set_submodule,
)

__all__ = ["Architecture", "Base", "Block", "build_model", "cache_path", "check_forward",
           "check_inputs", "find_blocks",
           "find_head", "input_shape", "last_linear", "load_checkpoint", "obtain_base",
           "set_submodule", "space_size", "spatial_convs", "state_digest"]
