"""`coldstart export` and `report`: what rounds left in a workspace, as files people and tools read."""

from __future__ import annotations

import shlex
from pathlib import Path

from coldstart.tasks.commands import command
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.export import export
from coldstart.tasks.report import write_report
from coldstart.tasks.workspace import Workspace


def cmd_export(a) -> int:
    result = export(Workspace.open(a.workspace), a.format, Path(a.out), round_no=a.round,
                    min_confidence=a.min_confidence, copy=not a.link)
    left = f" ({result.skipped} auto label(s) under --min-confidence left out)" if result.skipped else ""
    print(f"exported {result.rows} file(s) as {a.format} to {result.out}{left}")
    if result.unknown_out is not None:
        print(f"{result.unknown} file(s) labeled 'unknown' (none of these) listed apart in {result.unknown_out}")
    return 0


def cmd_report(a) -> int:
    """`coldstart report`: write a round's HTML report again, from the workspace as that round left it."""
    ws = Workspace.open(a.workspace)
    tags = ws.round_tags()
    if not tags:
        raise WorkspaceError(f"{ws.root}: no round yet; run `{command('coldstart')} round -w "
                             f"{shlex.quote(str(ws.root))}` first")
    n = tags[-1] if a.round is None else a.round
    if n not in tags:
        raise WorkspaceError(f"there is no round {n} (rounds: {', '.join(map(str, tags))})")
    with ws.lock():
        path = write_report(ws, n, out=Path(a.out) if a.out else None)
    print(f"round {n}'s report: {path}")
    return 0
