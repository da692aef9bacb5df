"""Errors the stages raise. All derive from ColdstartError: the CLI turns each into a message
and exit code 2, never a traceback."""

from __future__ import annotations

from coldstart.models.errors import ColdstartError, ConfigError  # noqa: F401  (the stages raise it too)


class WorkspaceError(ColdstartError):
    """The folder is not a coldstart workspace, it is busy (locked by another round), or a stage's
    input is missing (the message names the stage to run first)."""


class LabelFileError(ColdstartError):
    """A human label file was rejected whole; ``problems`` lists every problem with its row."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{path}: rejected, nothing merged ({len(self.problems)} problem(s)):\n{listed}")


class SelectionError(ColdstartError):
    """The review batch cannot be selected as asked (empty pool, unknown strategy, ...)."""


class VersioningError(ColdstartError):
    """Git/DVC could not record the round; local data is intact, the message says how to retry."""


class TrackingError(ColdstartError):
    """MLflow could not record the round; local data is intact, the message says how to retry."""
