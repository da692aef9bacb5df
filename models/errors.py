"""The one exception hierarchy of coldstart.

Every error a user can cause or fix derives from :class:`ColdstartError`; the CLI turns it into
a message and a non-zero exit code instead of a traceback. It lives in ``models`` because that
is the lowest layer: ``tasks`` and ``flows`` import it from here.
"""

from __future__ import annotations


class ColdstartError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` says what and how to fix it."""


class ConfigError(ColdstartError):
    """params.yaml is missing, unparsable or has a bad value (the message names the key)."""


class WeightsUnavailableError(ColdstartError):
    """Model weights could not be loaded (message says what was tried and the fix)."""


class WorkspaceError(ColdstartError):
    """The folder is not a coldstart workspace, or it is busy (locked by another round)."""


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
