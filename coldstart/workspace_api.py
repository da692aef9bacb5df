"""``coldstart.open_workspace``: light (no torch, Prefect or MLflow), unlike the round's functions
in coldstart/public.py."""

from __future__ import annotations

from coldstart.tasks.workspace import Workspace


def open_workspace(path: str = ".") -> Workspace:
    """An existing workspace (raises WorkspaceError, saying how to create one, if it is not)."""
    return Workspace.open(path)
