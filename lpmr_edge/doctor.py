"""``lpmr-edge doctor``: what this machine has for lpmr-edge — Python, runtime versions, the CPU features
that decide INT8/BF16 speed, OpenVINO's default precision here, the emulated arm64 root, Chromium, sshd, the
C++ compilers that build ExecuTorch's native runner — and what ``make test`` would still install."""
from __future__ import annotations

import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

SUPPORTED_PYTHONS = ((3, 10), (3, 13))  # oldest and newest minor version every pinned dependency ships wheels for
PACKAGES = ("torch", "torchvision", "executorch", "openvino", "nncf", "open_clip_torch", "numpy", "transformers")
CPU_FEATURES = {  # what we report -> the /proc/cpuinfo flag that shows it
    "AVX-512 VNNI": "avx512_vnni", "AVX-VNNI": "avx_vnni", "AVX-512 BF16": "avx512_bf16", "AMX tile": "amx_tile",
    "AMX BF16": "amx_bf16", "AMX INT8": "amx_int8", "NEON dot-product": "asimddp", "i8mm": "i8mm",
}
CPUINFO = Path("/proc/cpuinfo")
# What `make test` installs when missing (the Makefile's FMNIST, CHROMIUM and SSHD; tests/test_doctor.py pins them)
SYSTEM_NEEDS = {
    "dataset-fashion-mnist": Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
    "chromium": Path("/usr/bin/chromium"),
    "openssh-server": Path("/usr/sbin/sshd"),
}


def package_versions() -> dict[str, str | None]:
    """Installed version of each runtime-relevant package (None when absent)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read_cpuinfo() -> str:
    """This machine's /proc/cpuinfo text ("" where there is none)."""
    return CPUINFO.read_text() if CPUINFO.is_file() else ""


def cpu_features(cpuinfo: str) -> dict[str, bool]:
    """The features in CPU_FEATURES present in a /proc/cpuinfo text (x86 ``flags``, Arm ``Features``)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    return {label: flag in flags for label, flag in CPU_FEATURES.items()}


def cpu_model(cpuinfo: str) -> str:
    """The CPU's model name from /proc/cpuinfo (or the machine type)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "CPU part") and value.strip():
            return value.strip()
    return platform.machine()


def openvino_default_precision() -> str:
    """The inference precision OpenVINO's CPU plugin uses when not told (bf16 on AMX/AVX512-BF16 CPUs)."""
    try:
        import openvino
    except ImportError:
        return "openvino not installed"
    return openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


def emulated_root() -> dict[str, Any]:
    """Where the emulated arm64 root is expected and whether a finished build is there."""
    from lpmr_edge.devices.emulated import GUEST_STAMP, default_root

    root = default_root()
    return {"path": str(root), "ready": (root / GUEST_STAMP).is_file()}


def native_runner_compilers() -> dict[str, dict[str, str | None]]:
    """Per device architecture the native runner is built for: the compiler it needs, its Debian package and
    where it is on PATH (None: missing; that architecture's ``?runner=native`` devices cannot be served)."""
    from lpmr_edge.runtimes.executorch.native.build import WHEEL_PLATFORMS, toolchain

    compilers = {}
    for arch in WHEEL_PLATFORMS:
        command, package = toolchain(arch)
        compilers[arch] = {"command": command, "package": package, "path": shutil.which(command)}
    return compilers


def python_info() -> dict[str, Any]:
    """This Python and whether lpmr-edge supports it."""
    version = sys.version_info[:2]
    return {"version": platform.python_version(), "executable": sys.executable,
            "supported": SUPPORTED_PYTHONS[0] <= version <= SUPPORTED_PYTHONS[1]}


def diagnose(project_dir: Path | None = None) -> dict[str, Any]:
    """Everything ``lpmr-edge doctor`` reports. ``project_dir``: a source checkout, whose ``make test`` would
    also create ``.venv`` when it is not installed yet."""
    cpuinfo = read_cpuinfo()
    root = emulated_root()
    compilers = native_runner_compilers()
    tools = {"chromium": shutil.which("chromium") or None, "sshd": shutil.which("sshd", path="/usr/sbin:/usr/bin"),
             **{f"native runner compiler for {arch} ({entry['command']})": entry["path"]
                for arch, entry in compilers.items()}}
    would_install = [package for package, path in SYSTEM_NEEDS.items() if not path.exists()]
    would_install += [entry["package"] for arch, entry in compilers.items()  # `make setup`'s cross compiler
                      if entry["path"] is None and arch != platform.machine() and platform.machine() == "x86_64"]
    if not root["ready"]:
        would_install.append(f"emulated arm64 root ({root['path']}, `make arm-root`)")
    if project_dir is not None and not (project_dir / ".venv" / ".installed").is_file():
        would_install.insert(0, f"the project virtualenv ({project_dir / '.venv'}, pinned set)")
    return {"python": python_info(), "packages": package_versions(),
            "cpu": {"arch": platform.machine(), "model": cpu_model(cpuinfo), "features": cpu_features(cpuinfo)},
            "openvino_default_precision": openvino_default_precision(), "emulated_arm64_root": root,
            "tools": tools, "make_test_would_install": would_install}
