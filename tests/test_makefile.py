"""The Makefile's set-up split: `make demo` installs only what the demo uses, `make test` everything."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DEBIAN_PACKAGES = {"dataset-fashion-mnist", "chromium", "openssh-server", "g++-aarch64-linux-gnu"}

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _make_dry_run(project: Path, *arguments: str) -> str:
    """The commands ``make -n`` prints in ``project``, as a top-level make prints them: under ``make test`` the
    inherited MAKELEVEL/MAKEFLAGS would add "Entering directory" lines to them."""
    outer_make = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}
    environment = {name: value for name, value in os.environ.items() if name not in outer_make}
    return subprocess.run(["make", "-n", *arguments], cwd=project, env=environment, capture_output=True,
                          text=True, check=True).stdout


def _dry_run(target: str, tmp_path: Path) -> str:
    """``make -n target`` in a copy of the project's Makefile with an up-to-date virtualenv and every system
    file it checks pointed at a missing path, so each install it would make shows in the commands."""
    project = tmp_path / target
    project.mkdir()
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, project / name)
    stamp = project / ".venv" / ".installed"
    stamp.parent.mkdir()
    stamp.touch()
    later = stamp.stat().st_mtime + 10
    os.utime(stamp, (later, later))
    missing = {name: str(tmp_path / "missing" / name.lower()) for name in ("FMNIST", "CHROMIUM", "SSHD", "CROSS_CXX")}
    return _make_dry_run(project, target, *(f"{name}={path}" for name, path in missing.items()))


def _installed(commands: str) -> set[str]:
    return {package for package in DEBIAN_PACKAGES if f"apt-get install -y -qq {package}" in commands}


def test_demo_installs_only_what_the_run_uses(tmp_path: Path):
    commands = _dry_run("demo", tmp_path)
    assert _installed(commands) == {"dataset-fashion-mnist"}
    assert "lpmr-edge run --model lpmr-tiny-fmnist --target x86 --target arm" in commands


def test_test_and_setup_install_every_system_package(tmp_path: Path):
    assert _installed(_dry_run("test", tmp_path)) == DEBIAN_PACKAGES
    assert _installed(_dry_run("setup", tmp_path)) == DEBIAN_PACKAGES


@pytest.mark.parametrize("failing", ["nothing", "pip install uv", "uv pip install"])
def test_uv_installs_the_venv_and_pip_does_when_uv_cannot_be_installed_or_fails(tmp_path: Path, failing: str):
    """The virtualenv recipe, run with stand-ins for pip and uv that log their arguments and fail at ``failing``."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, project / name)
    recipe = _make_dry_run(project, ".venv/.installed", "PYTHON=true")
    bin_dir, log = project / ".venv" / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(parents=True)
    for tool, fails in (("pip", failing == "pip install uv" and '[ "$*" = "install -q -c constraints.txt uv" ]'),
                        ("uv", failing == "uv pip install" and "true"), ("python", False)):
        (bin_dir / tool).write_text(f'#!/bin/bash\necho "{tool} $*" >> {log}\n'
                                    + (f"if {fails}; then exit 1; fi\n" if fails else "") + "exit 0\n")
        (bin_dir / tool).chmod(0o755)
    subprocess.run(["bash", "-ec", recipe], cwd=project, check=True, capture_output=True,
                   env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    calls = log.read_text().splitlines()
    assert ("pip install -q -c constraints.txt -e .[dev]" in calls) == (failing != "nothing")  # pip's fallback
    assert any(call.startswith("uv pip install -q --compile-bytecode") for call in calls) == \
        (failing != "pip install uv")
