"""Errors a user can act on: each says where (file:line:col) and what."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ToolkitError(Exception):
    """Base of the errors toolkit reports to the user without a traceback."""


class ConfigError(ToolkitError):
    """A problem in a playbook, inventory or routes file, at a known position."""

    def __init__(self, path: str, line: int | None, col: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.col = col
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return f"{where}: {self.message}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f' (did you mean "{match[0]}"?)' if match else ""
