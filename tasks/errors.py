"""Errors the stages raise. All derive from ColdstartError: the CLI turns each into a message
and exit code 2, never a traceback."""

from __future__ import annotations

from coldstart.models.errors import ColdstartError, ConfigError  # noqa: F401  (the stages raise it too)


class WorkspaceError(ColdstartError):
    """The folder is not a coldstart workspace, it is busy (locked by another round), or a stage's
    input is missing (the message names the stage to run first)."""


class LabelFileError(ColdstartError):
    """A human label file was rejected whole; ``problems`` lists every problem with its row."""

    def __init__(self, path: str, problems: list[str], *, total: int | None = None):
        """``problems``: the ones to list (intake lists the first 50); ``total``: how many there
        were in all, when more than listed."""
        self.path = path
        self.problems = list(problems)
        self.total = max(total or 0, len(self.problems))
        listed = "\n".join(f"  - {p}" for p in self.problems)
        if self.total > len(self.problems):
            listed += f"\n  - ... and {self.total - len(self.problems)} more"
        super().__init__(f"{path}: rejected, nothing merged ({self.total} problem(s)):\n{listed}")


class LabelLogError(ColdstartError):
    """The label-event log could not be written (disk full, I/O error) or read (a corrupt line):
    the labels already in it are intact, and the answer files stay in data/inbox/ to retry."""


class SelectionError(ColdstartError):
    """The review batch cannot be selected as asked (empty pool, unknown strategy, ...)."""


class VersioningError(ColdstartError):
    """Git/DVC could not record the round; local data is intact, the message says how to retry."""


class TrackingError(ColdstartError):
    """MLflow could not record the round; local data is intact, the message says how to retry."""
