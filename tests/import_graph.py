"""The package's import graph, from every import statement (top level and inside functions).

    python tests/import_graph.py            # cycles, imports of missing files, counts; exit 1 if any
    python tests/import_graph.py --edges    # also every edge: importer -> imported

A module is a file ``coldstart/x/y.py`` of the checkout (``coldstart/flows``, ``tasks`` and
``models`` are symlinks to the top-level folders). ``from coldstart.tasks import intake`` is an
edge to the module ``coldstart.tasks.intake``; ``from coldstart.tasks.intake import read_events``
an edge to ``coldstart.tasks.intake``. An edge to a package's ``__init__`` is left out when that
file imports nothing of the project (the three layer folders' are empty). Imports under
``if TYPE_CHECKING:`` are left out too: they never run. A string constant of the form
``"coldstart.a.b:function"`` is an edge too: the CLI's handler names, imported when a command
runs (tasks/commands.py ``resolve``: the CLI's table, the benchmarks' in coldstart/bench/cli.py).
"""

from __future__ import annotations

import ast
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "coldstart"
HANDLER = re.compile(r"^(coldstart(?:\.\w+)+):\w+$")  # "module:function", imported by name when it runs


@dataclass
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)  # module name -> file in the checkout
    edges: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # importer -> imported -> lines
    missing: list[str] = field(default_factory=list)  # "file:line: name" for a coldstart.* import with no file
    inside_functions: int = 0  # import statements inside a function or method
    total: int = 0  # project import statements
    handlers: int = 0  # "coldstart.x.y:function" names (imported when a command runs)

    def cycles(self) -> list[list[str]]:
        """Strongly connected components with more than one module (or a self-import), sorted."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on: set[str] = set()
        out: list[list[str]] = []

        def visit(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
            index[v] = low[v] = len(index)
            stack.append(v)
            on.add(v)
            for w in self.edges.get(v, {}):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in self.edges.get(v, {}):
                    out.append(sorted(comp))

        for v in sorted(self.modules):
            if v not in index:
                visit(v)
        return sorted(out)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root / PACKAGE).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _in_function(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    lines.add(child.lineno)
    return lines


def build(root: Path = ROOT) -> Graph:
    """The graph of the package under ``root`` (default: this checkout)."""
    g = Graph()
    files = sorted(Path(d) / f for d, _, names in os.walk(root / PACKAGE, followlinks=True)  # through the symlinks
                   for f in names if f.endswith(".py") and "__pycache__" not in d)
    for p in files:
        g.modules[_module_name(p, root)] = p
    inert = {m for m, p in g.modules.items() if p.name == "__init__.py" and f"{PACKAGE}." not in p.read_text()}
    for name, path in g.modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip, inner = _type_checking_lines(tree), _in_function(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the importer's package
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in g.modules else base for a in node.names]
            targets = [t for t in dict.fromkeys(targets) if t == PACKAGE or t.startswith(PACKAGE + ".")]
            if targets:  # one statement, however many names it imports
                g.total += 1
                g.inside_functions += node.lineno in inner
            for target in targets:
                if target not in g.modules:
                    g.missing.append(f"{path.relative_to(root)}:{node.lineno}: {target}")
                    continue
                if target in inert or target == name:
                    continue
                g.edges.setdefault(name, {}).setdefault(target, []).append(node.lineno)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (m := HANDLER.match(node.value)):
                g.handlers += 1
                if m.group(1) not in g.modules:
                    g.missing.append(f"{path.relative_to(root)}:{node.lineno}: {m.group(1)}")
                elif m.group(1) != name:
                    g.edges.setdefault(name, {}).setdefault(m.group(1), []).append(node.lineno)
    return g


def main(argv: list[str]) -> int:
    g = build()
    if "--edges" in argv:
        for a in sorted(g.edges):
            for b, lines in sorted(g.edges[a].items()):
                print(f"{a} -> {b}  (line {', '.join(map(str, lines))})")
    cycles = g.cycles()
    for c in cycles:
        print("cycle:", " <-> ".join(c))
    for m in g.missing:
        print("no such file:", m)
    print(f"{len(g.modules)} modules, {g.total} project import statements ({g.inside_functions} inside functions), "
          f"{g.handlers} handler name(s), "
          f"{len(cycles)} cycle(s), {len(g.missing)} import(s) of missing files")
    return 1 if cycles or g.missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
