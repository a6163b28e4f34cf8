"""The CLI's registration has no import cycle: the Typer app lives in ``cli/app.py``, command modules
register on it, and the package, ``python -m lpmr_edge`` and the console script import cleanly."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lpmr_edge

PACKAGE_DIR = Path(lpmr_edge.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, deferred (function-level) imports included;
    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module."""
    modules = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def modules_in_cycles(graph: dict[str, set[str]]) -> set[str]:
    """Every module on some import cycle (members of strongly connected components larger than one)."""
    def reachable(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    return {module for module in graph if module in reachable(module)}


def test_cycle_finder_sees_a_cycle():
    assert modules_in_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == {"a", "b"}


def test_no_cli_module_is_on_an_import_cycle():
    cyclic = {module for module in modules_in_cycles(import_graph()) if module.startswith("lpmr_edge.cli")}
    assert cyclic == set()


def test_every_command_module_registers_on_the_app_module():
    graph = import_graph()
    commands = graph["lpmr_edge.cli.commands"]
    assert len(commands) >= 7 and all("lpmr_edge.cli.app" in graph[module] for module in commands)
    assert graph["lpmr_edge.cli.app"].isdisjoint(commands | {"lpmr_edge.cli", "lpmr_edge.cli.commands"})


def test_entry_points_import_cleanly(tmp_path: Path):
    for code in (("import lpmr_edge.cli.artifacts; from lpmr_edge.cli import app; assert 'export' in "
                 "[c.name for c in app.registered_commands]"),
                 "from lpmr_edge.cli import main"):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
        assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "lpmr_edge", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert run.returncode == 0 and "eval" in run.stdout, run.stderr
