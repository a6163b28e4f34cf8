"""The pinned install: CPU torch only, open_clip importable beside PyPI's torchvision, the pinned set
resolvable from PyPI for every supported Python, and the built wheel working outside the source tree.

What the resolution test proves and what it does not: pip resolves the project's dependencies under
``constraints.txt`` from PyPI (wheels only) for CPython 3.11-3.13 on manylinux x86_64 (on aarch64 only that
every pin needed there has a wheel: pip evaluates markers for the host, not for --platform), with
torch's *CPU* build standing in as a metadata-only wheel made from the installed CPU torch (PyPI's torch
is a CUDA build whose NVIDIA dependencies are beside the point), and likewise the pure-Python pins that
PyPI has as sdists only. Unproven here: that PyTorch's CPU index (``make TORCH_INDEX=...``, not reachable
from these machines) serves torch 2.13.0+cpu for 3.12/3.13 and aarch64, and that the packages import and
run on those Pythons (only 3.11 exists on these machines). Python 3.10 is not supported: numpy 2.4 (and
scipy 1.17, pandas 3) publish no cp310 wheels.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = ("3.11", "3.12", "3.13")
MANYLINUX = (17, 24, 27, 28, 31, 34, 35)
SDIST_ONLY_PINS = ("antlr4-python3-runtime",)  # pure Python, published as an sdist only
X86_64_ONLY_PINS = ("coremltools",)  # executorch needs it on macOS and x86_64 Linux only
PYPI = "https://pypi.org/simple"


def test_torch_is_the_cpu_build_and_no_cuda_packages_are_installed():
    assert torch.version.cuda is None
    assert "+cpu" in torch.__version__
    cuda_packages = [d.metadata["Name"] for d in metadata.distributions()
                     if d.metadata["Name"].lower().startswith(("nvidia-", "triton"))]
    assert cuda_packages == []


def test_open_clip_imports_through_the_torchvision_shim():
    from lpmr_edge._compat import import_open_clip, import_torchvision

    torchvision = import_torchvision()
    assert torchvision.__version__.startswith("0.28")
    open_clip = import_open_clip()
    assert "ViT-B-32" in open_clip.list_models()
    from torchvision.transforms import Normalize  # the part open_clip needs

    assert Normalize(mean=[0.5], std=[0.5])(torch.ones(1, 2, 2)).eq(1).all()


def _pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = dict(line.split("==") for line in lines if line)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins.items()}


def test_requires_python_and_the_torch_pin_take_no_local_build():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">={PYTHONS[0]},<3.{int(PYTHONS[-1].split('.')[1]) + 1}"
    assert _pins()["torch"] == "2.13.0"  # PyPI and PyTorch's CPU index both serve it; "+cpu" only the latter


def _metadata_wheels(directory: Path, names: tuple[str, ...]) -> Path:
    """Wheels holding only the installed distributions' metadata: the CPU torch (its dependencies, without
    NVIDIA's) and the pure-Python pins PyPI has as sdists only (pip's --python-version takes wheels only)."""
    directory.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        stem = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}"
        with zipfile.ZipFile(directory / f"{stem}-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{stem}.dist-info/METADATA", dist.read_text("METADATA"))
            wheel.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            wheel.writestr(f"{stem}.dist-info/RECORD", "")
    return directory


def _clean_pip_env() -> dict[str, str]:
    """This process's environment without the machine's pip configuration (its wheel directory and caps)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_") or key == "PIP_CERT"}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _pip_dry_run(python: str, arch: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``pip install --dry-run`` for a Python version and manylinux architecture, from PyPI (wheels only, the
    CPU torch and sdist-only pins as metadata wheels), without this machine's pip configuration."""
    platforms = [f"--platform=manylinux_2_{minor}_{arch}" for minor in MANYLINUX] + [f"--platform=manylinux2014_{arch}"]
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--target", str(tmp_path / "never"), "--python-version", python, *platforms,
                           "--only-binary=:all:", "--index-url", PYPI, "--find-links",
                           str(_metadata_wheels(tmp_path / "stubs", ("torch", *SDIST_ONLY_PINS))), *args],
                          capture_output=True, text=True, env=_clean_pip_env(), check=False, timeout=1200)


def _resolve_x86_64(python: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """The project's dependencies (with dev's) resolved under constraints.txt; pip's run and its JSON report."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join([*project["dependencies"], *project["optional-dependencies"]["dev"]]))
    report = tmp_path / "report.json"
    return _pip_dry_run(python, "x86_64", tmp_path, "--report", str(report), "-c", str(ROOT / "constraints.txt"),
                        "-r", str(requirements)), report


def _aarch64_wheels(python: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Every pin's aarch64 wheel found (``--no-deps``; the x86_64-only pins left out)."""
    pins = tmp_path / "pins.txt"
    pins.write_text("\n".join(f"{name}=={version}" for name, version in _pins().items()
                              if name not in X86_64_ONLY_PINS))
    return _pip_dry_run(python, "aarch64", tmp_path, "--no-deps", "-r", str(pins))


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Future]]:
    """The six PyPI resolutions (x86_64 and aarch64, each Python) started at once: each mostly waits on the
    network, so together they take about as long as the slowest. Keyed by (arch, python); each test asserts
    its own result."""
    checks = {"x86_64": _resolve_x86_64, "aarch64": _aarch64_wheels}
    with ThreadPoolExecutor(max_workers=len(checks) * len(PYTHONS)) as pool:
        yield {(arch, python): pool.submit(check, python, tmp_path_factory.mktemp(f"pip-{arch}-{python}"))
               for arch, check in checks.items() for python in PYTHONS}


@pytest.mark.slow
@pytest.mark.parametrize("python", PYTHONS)
def test_pinned_set_resolves_from_pypi(python: str, resolutions: dict[tuple[str, str], Future]):
    run, report = resolutions["x86_64", python].result()
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    resolved = {re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    pins = _pins()
    assert resolved["torch"] == "2.13.0+cpu" and resolved["executorch"] == pins["executorch"]
    assert {name: version for name, version in resolved.items() if name != "torch"} == \
        {name: pins[name] for name in resolved if name != "torch"}, "every resolved package is pinned, at its pin"


@pytest.mark.slow
@pytest.mark.parametrize("python", PYTHONS)
def test_every_pin_has_an_aarch64_wheel(python: str, resolutions: dict[tuple[str, str], Future]):
    """pip evaluates environment markers for the machine it runs on, not for ``--platform``, so on aarch64
    only the wheels are checked (``--no-deps``), not the dependency edges; coremltools is an executorch
    dependency on macOS and x86_64 Linux only."""
    run = resolutions["aarch64", python].result()
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]


def test_python_310_is_refused_by_the_pins():
    run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--python-version", "3.10",
                          "--platform=manylinux_2_28_x86_64", "--only-binary=:all:", "--index-url", PYPI,
                          "-d", os.devnull, f"numpy=={_pins()['numpy']}"],
                         capture_output=True, text=True, env=_clean_pip_env(), check=False, timeout=300)
    assert run.returncode != 0 and "No matching distribution found for numpy" in run.stderr


@pytest.mark.slow
def test_wheel_installs_outside_the_source_tree_and_evaluates_the_bundled_model(tmp_path: Path):
    """The wheel carries the weights, configs, targets and calibration set: a fresh venv that sees this
    environment's installed dependencies (a .pth line naming its site-packages, after the venv's own; this
    environment's editable lpmr-edge is not importable through it) but not the source tree runs eval."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("lpmr_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.endswith("weights/lpmr-tiny-fmnist.safetensors") for name in names)
    assert any("calibration_data/fmnist-train-300/manifest.json" in name for name in names)
    assert any(name.endswith("targets/x86.toml") for name in names)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    own_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    (own_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "LPMR_EDGE_CALIBRATION_DIR",
                                                                          "LPMR_EDGE_TARGETS_DIR")}
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "--quiet", "--force-reinstall", str(wheel)],
                               capture_output=True, text=True, cwd=outside, env=env, check=False)
    assert installed.returncode == 0, installed.stderr
    where = subprocess.run([str(python), "-c", "import lpmr_edge; print(lpmr_edge.__file__)"], capture_output=True,
                           text=True, cwd=outside, env=env, check=True).stdout
    assert where.startswith(str(env_dir)), where
    evaluated = subprocess.run([str(env_dir / "bin" / "lpmr-edge"), "eval", "--model", "lpmr-tiny-fmnist",
                                "--limit", "16", "--json", "--out", "r"], capture_output=True, text=True, cwd=outside,
                               env=env, check=False)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["n"] == 16
    targets = subprocess.run([str(env_dir / "bin" / "lpmr-edge"), "targets", "--json"], capture_output=True,
                             text=True, cwd=outside, env=env, check=True)
    assert {target["name"] for target in json.loads(targets.stdout)} >= {"x86", "arm"}


@pytest.mark.parametrize("configured, uses_torch_index", [({}, True), ({"PIP_FIND_LINKS": "/opt/wheels"}, False),
                                                          ({"PIP_INDEX_URL": "https://mirror.example/simple"}, False)])
def test_make_takes_torch_from_its_index_only_when_pip_has_no_source_configured(configured: dict[str, str],
                                                                                uses_torch_index: bool):
    makefile = (ROOT / "Makefile").read_text()
    check = re.search(r"^PIP_HAS_SOURCE := (.*)$", makefile, flags=re.MULTILINE).group(1)
    command = check.replace("$(BIN)/pip", f"{sys.executable} -m pip").replace("$$", "$")
    has_source = subprocess.run(["bash", "-c", command], env={**_clean_pip_env(), **configured}, check=False)
    assert (has_source.returncode != 0) == uses_torch_index
    assert "$(PIP_HAS_SOURCE) || $(BIN)/pip install -q -c constraints.txt torch --index-url $(TORCH_INDEX)" in makefile
