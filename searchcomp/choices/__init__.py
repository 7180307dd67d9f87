"""Per-block choices: layer replacements (a registry of :class:`Choice` classes), filter
pruning and weight quantization.

Within a block the choices compose in a fixed order: prune (:mod:`.prune`) -> replace the
block's convs or the head (a registered :class:`Choice`) -> quantize (:mod:`.quant`).
"""

from searchcomp.choices.base import CONV_KINDS, Applied, Choice, conv_kind
from searchcomp.choices.registry import (
    ENTRY_POINT_GROUP,
    all_choices,
    channel_multiple,
    code,
    get,
    legend,
    names,
    parse_value,
    register,
)

__all__ = ["CONV_KINDS", "ENTRY_POINT_GROUP", "Applied", "Choice", "all_choices",
           "channel_multiple", "code", "conv_kind", "get", "legend", "names", "parse_value",
           "register"]
