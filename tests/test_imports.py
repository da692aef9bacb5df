"""The package's structure as a static tool sees it (tests/import_graph.py): every
``coldstart.*`` import names a file of the checkout, and no import cycle, counting the imports
inside functions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.import_graph import ROOT, build


def test_every_coldstart_import_names_a_file_of_the_checkout_and_nothing_imports_in_a_cycle():
    graph = build()
    assert len(graph.modules) > 50 and graph.total > 300  # it read the whole package, symlinks followed
    assert graph.missing == []
    assert graph.cycles() == []


def test_the_layer_folders_are_the_packages_coldstart_imports():
    for name in ("flows", "tasks", "models"):
        link = ROOT / "coldstart" / name
        assert link.is_symlink() and link.resolve() == ROOT / name and not Path(link.readlink()).is_absolute()


def test_the_script_finds_a_cycle_and_an_import_of_a_missing_file(tmp_path):
    """The check can fail: a copy of the package with a cycle and a bad import."""
    pkg = tmp_path / "coldstart"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from coldstart.b import g\n")
    (pkg / "b.py").write_text("from coldstart import a\nimport coldstart.nothing_here\n")
    # a handler name ("module:function", imported when a command runs) is an import too
    (pkg / "c.py").write_text('HANDLERS = {"x": "coldstart.d:run", "y": "coldstart.gone:run"}\n')
    (pkg / "d.py").write_text("from coldstart.c import HANDLERS\n")
    graph = build(tmp_path)
    assert graph.cycles() == [["coldstart.a", "coldstart.b"], ["coldstart.c", "coldstart.d"]]
    assert [m.split(": ")[1] for m in graph.missing] == ["coldstart.nothing_here", "coldstart.gone"]
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "import_graph.py")], capture_output=True, text=True)
    assert out.returncode == 0 and "0 cycle(s), 0 import(s) of missing files" in out.stdout, out.stdout


def test_every_subcommand_names_a_handler_that_imports():
    """The CLI imports a command's module only when it runs (flows/cli.py ``handler``): a typo in
    a "module:function" name would fail only then, so every one is resolved here."""
    import argparse

    from coldstart.flows.cli import build_parser
    from coldstart.tasks.commands import resolve

    def leaves(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sp in action.choices.values():
                    yield from leaves(sp) if any(isinstance(a, argparse._SubParsersAction) for a in sp._actions) \
                        else [sp]

    found = [sp.get_default("fn") for sp in leaves(build_parser())]
    assert len(found) >= 15 and all(callable(resolve(fn)) for fn in found)
