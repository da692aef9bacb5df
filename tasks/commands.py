"""The commands coldstart prints for a person to paste: each runs as printed, activated
virtualenv or not."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

# The module each tool also runs as (`python -m ...`), where no executable sits beside Python.
MODULES = {"coldstart": "coldstart.flows.cli", "mlflow": "mlflow", "dvc": "dvc", "prefect": "prefect"}


def command(name: str) -> str:
    """How to run ``name`` (coldstart, mlflow, dvc, prefect) in this environment, as text to
    paste into a shell: the executable beside this Python (the virtualenv's, whether or not it is
    activated), else ``python -m``. Every command coldstart prints starts with this."""
    exe = Path(sys.executable).with_name(name)
    if exe.is_file() and os.access(exe, os.X_OK):
        return shlex.quote(str(exe))
    return f"{shlex.quote(sys.executable)} -m {MODULES[name]}"


def write_json(path: str | None, data) -> None:
    """``--json FILE``: the data as JSON into FILE; ``--json -``: onto stdout."""
    if path == "-":
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif path:
        Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def resolve(spec: str) -> Any:
    """The function a ``"module:function"`` name says, its module imported now: how the CLI's and
    the benchmarks' handler tables stay light until a command runs (tests/import_graph.py counts
    these names as imports)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
