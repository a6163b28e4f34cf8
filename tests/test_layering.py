"""The package's layering: the import-linter contracts in pyproject.toml (layers, forbidden imports, no cycle
at any depth; imports inside functions count, ``if TYPE_CHECKING:`` blocks do not), checked on every run,
plus what a graph cannot show: what a runtime import really loads, and what a device-shipped loader needs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

from lpmr_edge.backends import BACKENDS

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def _lint(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on ``config`` in a fresh process (its console binds to the stdout it starts with)."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(cwd)})


def test_the_import_contracts_hold() -> None:
    run = _lint(PYPROJECT, ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_contracts_catch_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    package = tmp_path / "layered_demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from layered_demo import high  # deferred: still counted\n")
    (package / "high.py").write_text("from layered_demo import low\n")
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_package = "layered_demo"\n\n'
                      '[[tool.importlinter.contracts]]\nname = "layers"\ntype = "layers"\n'
                      'layers = ["layered_demo.high", "layered_demo.low"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "acyclic"\ntype = "acyclic_siblings"\n'
                      'ancestors = ["layered_demo"]\n')
    run = _lint(config, tmp_path)
    report = run.stdout
    assert run.returncode == 1, report + run.stderr
    assert "layered_demo.low is not allowed to import layered_demo.high" in report and "No cycles" in report


def test_every_module_of_the_package_sits_in_a_layer() -> None:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    layers = next(contract for contract in config if contract["type"] == "layers")["layers"]
    placed = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    graph = grimp.build_graph("lpmr_edge", cache_dir=None)
    top_level = {module for module in graph.find_children("lpmr_edge") if module != "lpmr_edge.__main__"}
    assert top_level - placed == set()


def test_every_command_module_registers_on_the_app_module() -> None:
    graph = grimp.build_graph("lpmr_edge", cache_dir=None)
    commands = graph.find_modules_directly_imported_by("lpmr_edge.cli.commands")
    assert len(commands) >= 7
    assert all(graph.direct_import_exists(importer=module, imported="lpmr_edge.cli.app") for module in commands)
    assert graph.find_modules_directly_imported_by("lpmr_edge.cli.app").isdisjoint(
        commands | {"lpmr_edge.cli", "lpmr_edge.cli.commands"})


@pytest.mark.parametrize("module", ["lpmr_edge.runtimes.factory", "lpmr_edge.runtimes.device",
                                    *(backend.runtime_class.split(":")[0] for backend in BACKENDS.values())])
def test_importing_a_runtime_loads_no_export_quantize_data_parity_or_suite(module: str) -> None:
    loaded = subprocess.run([sys.executable, "-c", f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    assert not [name for name in json.loads(loaded.stdout)
                if name.startswith(("lpmr_edge.export", "lpmr_edge.quantize", "lpmr_edge.data", "lpmr_edge.parity",
                                    "lpmr_edge.suite"))]


@pytest.mark.parametrize("runner", [runner for backend in BACKENDS.values() for runner in backend.runners.values()
                                    if runner.bundle is None],  # a binary runner runs no Python on the device
                         ids=lambda runner: runner.loader)
def test_a_device_loader_imports_only_the_standard_library_numpy_and_its_runtime(runner) -> None:
    graph = grimp.build_graph("lpmr_edge", include_external_packages=True, cache_dir=None)
    imported = graph.find_modules_directly_imported_by(runner.loader)
    allowed = {*sys.stdlib_module_names, "numpy", *(module.split(".")[0] for module in runner.modules)}
    assert not {name for name in imported if name.startswith("lpmr_edge")}, imported
    assert imported and imported <= allowed, imported - allowed
