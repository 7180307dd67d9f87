"""What every config object shares: strict, frozen models and field-located errors."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

#: a user factory: ``package.module:function``
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def field_error(loc: tuple, value: Any, message: str) -> ValidationError:
    """A validation error about the field at ``loc``, raised from a whole-space validator so
    the message still points at that field's line."""
    return ValidationError.from_exception_data("Space", [InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=loc, input=value)])


class Strict(BaseModel):
    """Unknown keys are errors; objects are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
