"""The layering of runtimes, artifacts, export and devices, checked on the package's import graph (imports
inside functions included, ``if TYPE_CHECKING:`` blocks excluded: they never run)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lpmr_edge.backends import BACKENDS

PACKAGE = Path(__file__).resolve().parents[1] / "lpmr_edge"
LAYERED = ("lpmr_edge.backends", "lpmr_edge.runtimes", "lpmr_edge.export", "lpmr_edge.parity", "lpmr_edge.devices", "lpmr_edge.artifact",
           "lpmr_edge.manifest", "lpmr_edge.targets", "lpmr_edge.quantize", "lpmr_edge.bench")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Every module an AST imports when it runs (any depth), type-checking-only blocks left out."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.extend(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                         for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, each with the packages whose ``__init__`` that runs."""
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for imported in _runtime_imports(ast.parse(path.read_text())):
            parts = imported.split(".")
            edges |= {".".join(parts[:end]) for end in range(1, len(parts) + 1)} & set(MODULES)
        graph[name] = edges - {name}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for module in graph[todo.pop()] - seen:
            seen.add(module)
            todo.append(module)
    return seen


def test_no_import_cycle_through_runtimes_export_parity_or_devices() -> None:
    graph = _graph()
    cycles = sorted(module for module in graph if module.startswith(LAYERED) and module in _reachable(graph, module))
    assert not cycles, f"modules that import themselves through others: {cycles}"


@pytest.mark.parametrize("module", ["lpmr_edge.runtimes.factory", "lpmr_edge.runtimes.device",
                                    *(backend.runtime_class.split(":")[0] for backend in BACKENDS.values())])
def test_a_runtime_never_reaches_export_quantize_data_or_parity(module: str) -> None:
    reached = _reachable(_graph(), module)
    assert not {m for m in reached if m.startswith(("lpmr_edge.export", "lpmr_edge.quantize", "lpmr_edge.data",
                                                    "lpmr_edge.parity", "lpmr_edge.suite"))}
    loaded = subprocess.run([sys.executable, "-c", f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"],
                            capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert not [m for m in json.loads(loaded.stdout) if m.startswith(("lpmr_edge.export", "lpmr_edge.quantize",
                                                                      "lpmr_edge.data", "lpmr_edge.parity"))]


@pytest.mark.parametrize("runner", [runner for backend in BACKENDS.values() for runner in backend.runners.values()],
                         ids=lambda runner: runner.loader)
def test_a_device_loader_imports_only_the_standard_library_numpy_and_its_runtime(runner) -> None:
    allowed = {*sys.stdlib_module_names, "numpy", *(module.split(".")[0] for module in runner.modules)}
    imported = {name.split(".")[0] for name in _runtime_imports(ast.parse(runner.loader_source))}
    assert imported and imported <= allowed, imported - allowed


def test_the_device_base_class_knows_no_device_kind() -> None:
    assert not {m for m in _graph()["lpmr_edge.devices.base"] if m.startswith("lpmr_edge.devices.")}


def test_the_backend_records_and_devices_import_no_runtime_export_or_suite() -> None:
    graph = _graph()
    assert graph["lpmr_edge.backends"] <= {"lpmr_edge", "lpmr_edge.errors"}
    devices = {module: graph[module] for module in graph if module.startswith("lpmr_edge.devices")}
    upward = {module: sorted(m for m in imported if m.startswith(("lpmr_edge.runtimes", "lpmr_edge.export",
                                                                  "lpmr_edge.suite", "lpmr_edge.parity")))
              for module, imported in devices.items()}
    assert not {module: found for module, found in upward.items() if found}
