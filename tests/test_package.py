"""The package as users import it: one `coldstart` namespace, cheap to import, no stray names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("coldstart", "flows", "tasks", "models", "tests") for p in (ROOT / d).rglob("*.py")]


def test_nothing_imports_the_folders_as_top_level_packages():
    """`flows`, `tasks` and `models` install as coldstart.*; a bare `import models` works from a
    source checkout only, and would break the installed wheel."""
    bad = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("flows", "tasks", "models")]
    assert bad == []


def test_import_coldstart_is_cheap_and_the_api_resolves():
    code = ("import sys, coldstart; heavy = {'torch', 'prefect', 'mlflow', 'dvc'} & set(sys.modules); "
            "assert not heavy, heavy; print(sorted(coldstart.__all__)); print(coldstart.ColdstartError.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True).stdout
    assert "coldstart.models.errors" in out and "'load_champion'" in out
    import coldstart

    assert coldstart.RoundRecord.__module__ == "coldstart.flows.record"
    assert all(callable(getattr(coldstart, name)) for name in coldstart.__all__)


def test_the_repository_is_a_workspace_template():
    """The files at the repository root are the ones `coldstart init` writes."""
    for name in ("dvc.yaml", "params.yaml"):
        assert (ROOT / name).read_text() == (ROOT / "flows" / "template" / name).read_text(), name
