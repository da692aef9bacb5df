"""`coldstart init`: a new workspace (git + DVC + local remote + params.yaml). Its own module: it
imports neither torch nor Prefect, so it answers at once."""

from __future__ import annotations

import shlex

from coldstart.tasks.commands import command
from coldstart.tasks.version import init_workspace


def cmd_init(a) -> int:
    """Create the workspace and say what to do next."""
    ws = init_workspace(a.directory, remote=a.remote)
    print(f"created workspace {ws.root}\n  put images in {ws.images}/, edit {ws.params_file}, then run:\n"
          f"  {command('coldstart')} round --workspace {shlex.quote(str(ws.root))}")
    return 0
