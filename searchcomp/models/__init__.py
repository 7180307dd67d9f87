"""The network: built from the space (torchvision or a user factory), its searchable blocks
(residual, inverted residual or plain; :mod:`.families`), and the trained base every
candidate starts from."""

from searchcomp.models.base import Base, cache_path, obtain_base, state_digest
from searchcomp.models.blocks import Block, describe_head, find_blocks, find_head, space_size
from searchcomp.models.checks import Architecture, check_inputs
from searchcomp.models.factory import (
    build_model,
    check_forward,
    first_conv,
    head_candidates,
    input_shape,
    last_linear,
    load_checkpoint,
    set_submodule,
)
from searchcomp.models.families import auto_blocks, conv_targets, family_of

__all__ = ["Architecture", "Base", "Block", "auto_blocks", "build_model", "cache_path",
           "check_forward", "check_inputs", "conv_targets", "describe_head", "family_of",
           "find_blocks", "find_head", "first_conv", "head_candidates", "input_shape",
           "last_linear", "load_checkpoint", "obtain_base", "set_submodule", "space_size",
           "state_digest"]
