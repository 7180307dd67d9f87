"""Errors a user can cause, reported as one clear line and exit code 2."""

from __future__ import annotations


class SearchcompError(Exception):
    """Base class for every error caused by the user's input, not by a bug.

    ``field`` (dotted, e.g. ``model.arch``) names the space-file field at fault, so the
    command line can add the file and line (see :meth:`searchcomp.config.Space.located`).
    """

    exit_code = 2

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SpaceError(SearchcompError):
    """A problem with the space file: names the file, the field and the line."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.detail = message
        super().__init__(self._format_where(file, field, line, message), field=field)

    @staticmethod
    def _format_where(file: str | None, field: str | None, line: int | None, msg: str) -> str:
        where = file or "<space>"
        if line is not None:
            where += f":{line}"
        if field:
            where += f": {field}"
        return f"{where}: {msg}"


class DataError(SearchcompError):
    """A dataset cannot be found or read; the message says where to put the files."""


class ChoiceError(SearchcompError):
    """A per-block choice cannot be applied to the layer it targets."""


class OutputError(SearchcompError):
    """A file searchcomp must write (trial weights, the study folder) cannot be written: the
    disk, not the candidate, is at fault, so a search stops instead of failing every trial."""
