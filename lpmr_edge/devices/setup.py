"""``lpmr-edge device setup``: check a device and install what its device server needs.

What a device needs: Python >= 3.9, numpy, and the runtime of the artifacts it runs, at the versions
this host runs: openvino; or executorch with torch importable (its Python runtime links libtorch;
on aarch64 every PyPI torch that fits executorch is a CUDA build that pulls its NVIDIA libraries,
several GB, even on a CPU board) and torchao. Nothing of lpmr-edge, open_clip or NNCF.

When the device's Python is the default, the private venv ``<workdir>/venv``, setup creates it
(``python3 -m venv``; Debian needs python3-venv) and pip-installs the pinned binary wheels into it:
the device needs its own access to PyPI (or a mirror in its pip configuration). A Python named in
the spec is only checked, never changed.

With a binary runner (``--runner native``: ExecuTorch's C++ runner) none of that is needed: setup builds the
runner bundle for the device's architecture, copies it to ``<workdir>/runners/`` there (each file checked by
sha256 on the device, lpmr_edge/devices/binary.py), starts it once and reports what it found.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from lpmr_edge.backends import BACKENDS, PYTHON_RUNNER, Runner
from lpmr_edge.devices.base import Device
from lpmr_edge.devices.binary import prepare_runner
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


def setup_binary_runner(device: Device, runtimes: list[str], kind: str, log: Log) -> dict[str, Any]:
    """Copy the ``kind`` binary runner of those ``runtimes`` that have one to the device, start it once and report
    what it found there."""
    chosen = {runtime: BACKENDS[runtime].runners[kind] for runtime in runners(runtimes)
              if kind in BACKENDS[runtime].runners}
    if not chosen:
        raise UserError(f"none of the runtimes {', '.join(runtimes)} has a '{kind}' runner; choose one that has "
                        "(--runtime executorch) or leave --runner out")
    device.prepare()
    described = {}
    for runtime, runner in chosen.items():
        installed = prepare_runner(device, runner)
        assert installed is not None, f"the {kind} runner of {runtime} is no binary runner"
        log(f"{device.label}: {kind} runner for {runtime} in {installed.directory} "
            f"({installed.record['footprint_mb']:.1f} MB, {len(installed.copied)} file(s) copied)")
        session = DeviceSession(device, runner=installed)
        try:
            reply, _ = session.request({"op": "probe", "modules": [], "workdir": device.workdir})
        finally:
            session.close()
        described[runtime] = {**installed.describe(), "copied": installed.copied}
    hello = session.hello
    return {"device": device.describe(), "spec": device.spec or device.label, "python": None, "workdir": device.workdir,
            "machine": hello["machine"], "python_version": None, "libc": hello["libc"], "free_mb": reply["free_mb"],
            "packages": {}, "installed": [], "runners": described, "ready": {runtime: True for runtime in chosen}}


def setup_device(device: Device, runtimes: list[str], log: Log, runner: str | None = None) -> dict[str, Any]:
    """Prepare the device (private venv: create and install) and report what its Python finds; with a binary
    ``runner`` kind (e.g. ``native``), ``setup_binary_runner`` instead."""
    if runner not in (None, PYTHON_RUNNER):
        return setup_binary_runner(device, runtimes, runner, log)
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
