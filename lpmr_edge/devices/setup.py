"""``lpmr-edge device setup``: check a device and install what its device server needs.

What a device needs: Python >= 3.9, numpy, and the runtime of the artifacts it runs, at the versions
this host runs: openvino; or executorch with torch importable (its Python runtime links libtorch;
on aarch64 every PyPI torch that fits executorch is a CUDA build that pulls its NVIDIA libraries,
several GB, even on a CPU board) and torchao. Nothing of lpmr-edge, open_clip or NNCF.

When the device's Python is the default, the private venv ``<workdir>/venv``, setup creates it
(``python3 -m venv``; Debian needs python3-venv) and pip-installs the pinned binary wheels into it:
the device needs its own access to PyPI (or a mirror in its pip configuration). A Python named in
the spec is only checked, never changed.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from lpmr_edge.backends import BACKENDS, Runner
from lpmr_edge.devices.base import Device
from lpmr_edge.devices.session import DeviceSession
from lpmr_edge.errors import UserError

MIN_PYTHON = (3, 9)
SYSTEM_PYTHON = "python3"
VENV_TIMEOUT = 600.0
PIP_TIMEOUT = 3600.0

Log = Callable[[str], None]


def runners(runtimes: list[str]) -> dict[str, Runner]:
    """The default device runner of each runtime (a UserError for an unknown one)."""
    unknown = sorted(set(runtimes) - set(BACKENDS))
    if unknown:
        raise UserError(f"unknown runtime '{unknown[0]}'; use {' and/or '.join(BACKENDS)}")
    return {runtime: BACKENDS[runtime].runner() for runtime in runtimes}


def pinned_requirements(runtimes: list[str]) -> list[str]:
    """``package==version`` for numpy and each runtime's packages, at this host's versions (local labels
    such as ``+cpu`` dropped: the device takes PyPI's build for its platform)."""
    packages = ["numpy", *(package for runner in runners(runtimes).values() for package in runner.packages)]
    return [f"{package}=={metadata.version(package).split('+')[0]}" for package in packages]


def probe(device: Device, runtimes: list[str], python: str | None = None) -> dict[str, Any]:
    """What the device's Python finds: machine, Python, C library, packages and free space in the workdir."""
    modules = [module for runner in runners(runtimes).values() for module in runner.modules]
    session = DeviceSession(device, python=python)
    try:
        reply, _ = session.request({"op": "probe", "modules": modules, "workdir": device.workdir})
    finally:
        session.close()
    return {**session.hello, **reply}


def _check(device: Device, argv: list[str], timeout: float, failure: str) -> None:
    result = device.run(argv, timeout)
    if result.returncode != 0:
        raise UserError(f"device {device.label}: {failure} ({device.explain(result.returncode, result.stderr)})")


def install_private_venv(device: Device, runtimes: list[str], log: Log) -> list[str]:
    """Create ``<workdir>/venv`` on the device and pip-install the pinned wheels; returns the requirements."""
    facts = probe(device, [], python=SYSTEM_PYTHON)
    version = tuple(int(part) for part in facts["python"].split(".")[:2])
    if version < MIN_PYTHON:
        raise UserError(f"device {device.label} has Python {facts['python']}; the device server needs "
                        f">= {'.'.join(map(str, MIN_PYTHON))}")
    venv = device.private_python.removesuffix("/bin/python")
    log(f"{device.label}: {facts['machine']}, Python {facts['python']}, {facts['libc']}; creating {venv}")
    _check(device, [SYSTEM_PYTHON, "-m", "venv", venv], VENV_TIMEOUT,
           "cannot create a venv (on Debian/Raspberry Pi OS: sudo apt install python3-venv)")
    requirements = pinned_requirements(runtimes)
    log(f"{device.label}: pip install {' '.join(requirements)} (the device downloads them; this can take long)")
    _check(device, [device.python, "-m", "pip", "install", "--only-binary=:all:", "--disable-pip-version-check",
                    "--progress-bar", "off", *requirements], PIP_TIMEOUT,
           f"pip could not install the wheels for {facts['machine']} ({facts['libc']}, Python {facts['python']}); "
           "the device needs PyPI access and wheels for its platform (OpenVINO's aarch64 wheels need glibc >= 2.35)")
    return requirements


def setup_device(device: Device, runtimes: list[str], log: Log) -> dict[str, Any]:
    """Prepare the device (private venv: create and install) and report what its Python finds."""
    chosen = runners(runtimes)
    device.prepare()
    installed = install_private_venv(device, runtimes, log) if device.python == device.private_python else []
    facts = probe(device, runtimes)
    packages = facts["packages"]
    ready = {runtime: all(packages[name.split(".")[0]]["problem"] is None for name in ("numpy", *runner.modules))
             for runtime, runner in chosen.items()}
    return {"device": device.describe(), "spec": device.spec or device.label, "python": device.python,
            "workdir": device.workdir, "machine": facts["machine"], "python_version": facts["python"],
            "libc": facts["libc"], "free_mb": facts["free_mb"], "packages": packages, "installed": installed,
            "ready": ready}
