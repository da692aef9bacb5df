"""The root of coldstart's one exception hierarchy, and the errors the model layer raises.

Every error a user can cause or fix derives from :class:`ColdstartError`; the CLI turns it into
a message and a non-zero exit code instead of a traceback. The root lives in ``models``, the
lowest layer; each layer's own errors live beside it (the stages' in ``coldstart.tasks.errors``).
``ConfigError`` is here because both layers raise it (a bad ``model.device`` is found here).
"""

from __future__ import annotations


class ColdstartError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` says what and how to fix it."""


class ConfigError(ColdstartError):
    """params.yaml is missing, unparsable or has a bad value (the message names the key)."""


class WeightsUnavailableError(ColdstartError):
    """Model weights could not be loaded (message says what was tried and the fix)."""
