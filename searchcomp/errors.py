"""Errors a user can cause, reported as one clear line and exit code 2."""

from __future__ import annotations


class SearchcompError(Exception):
    """Base class for every error caused by the user's input, not by a bug."""

    exit_code = 2


class SpaceError(SearchcompError):
    """A problem with the space file: names the file, the field and the line."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 line: int | None = None) -> None:
        self.file = file
        self.field = field
        self.line = line
        self.detail = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.file or "<space>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.detail}"


class DataError(SearchcompError):
    """A dataset cannot be found or read; the message says where to put the files."""


class ChoiceError(SearchcompError):
    """A per-block choice cannot be applied to the layer it targets."""
