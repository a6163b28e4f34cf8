"""Builds the native ExecuTorch runner (runner.cpp) for a device architecture, cached by content.

The runner is compiled against the C++ headers and libraries the executorch wheel ships (``executorch/include``,
``executorch/lib``) at the version installed on this host: for this host's architecture the installed wheel,
for another one the same version's manylinux wheel for that architecture, fetched with ``pip download`` into
the cache and unpacked (only ``include/`` and ``lib/``). That wheel, not an emulated root, because a build then
needs neither the emulated root nor QEMU, and the libraries are exactly the ones PyPI ships for the device.

``build_runner(arch)`` returns a bundle directory, ``<cache>/native/<arch>-<key>/``, that a device receives as is:

  runner          the executable (RUNPATH $ORIGIN/lib)
  lib/*.so        only the wheel libraries the runner needs (its NEEDED entries, transitively)
  runner.json     {arch, executable: "runner", versions: {executorch}, compiler, key, files: {path: sha256},
                   needed: {file: [NEEDED]}, system_libraries: [NEEDED the device must provide],
                   requires: {GLIBC, GLIBCXX, CXXABI: newest symbol version needed}, footprint_mb}
                  (the bundle format of lpmr_edge/devices/binary.py, which copies it to a device)

The key hashes the sources, the compiler's version line, the flags, the executorch version and the
architecture; a bundle is written to a temporary directory and renamed, so a cached one is always complete.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lpmr_edge.cache import cache_root
from lpmr_edge.devices.binary import RECORD
from lpmr_edge.errors import UserError

SOURCE_DIR = Path(__file__).parent
SOURCES = ("runner.cpp", "json.h", "npy.h", "sha256.h", "build.py")  # what the key hashes
RUNNER = "runner"
LINKED = ("executorch", "executorch_backend_xnnpack", "executorch_kernels_optimized",
          "executorch_kernels_quantized", "executorch_threadpool")
DEFINES = ("C10_USING_CUSTOM_GENERATED_MACROS", "ET_EVENT_TRACER_ENABLED", "ET_USE_THREADPOOL")
FLAGS = ("-std=c++17", "-O2", "-Wall")
WHEEL_PLATFORMS = {"x86_64": "manylinux_2_28_x86_64", "aarch64": "manylinux_2_28_aarch64"}
_NEEDED = re.compile(r"\(NEEDED\)\s+Shared library: \[(.+)\]")
_SYMBOL_VERSION = re.compile(r"\b(GLIBC|GLIBCXX|CXXABI)_([0-9.]+)")


def toolchain(arch: str) -> tuple[str, str]:
    """The C++ compiler command for ``arch`` on this host and the Debian package that provides it."""
    if arch == platform.machine():
        return "g++", "g++"
    return f"{arch}-linux-gnu-g++", f"g++-{arch.replace('_', '-')}-linux-gnu"


def executorch_version() -> str:
    """The executorch version installed on this host (the device's runtime must match the exporter's)."""
    try:
        return importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:
        raise UserError("the native runner is built against the executorch wheel, which is not installed here; "
                        "install lpmr-edge's pinned executorch") from None


def wheel_root(arch: str, version: str) -> Path:
    """The ``executorch`` package directory (with ``include/`` and ``lib/``) of the wheel for ``arch``."""
    if arch == platform.machine():
        spec = importlib.util.find_spec("executorch")  # a namespace package: no __init__.py
        assert spec is not None and spec.submodule_search_locations
        return Path(next(iter(spec.submodule_search_locations)))
    if arch not in WHEEL_PLATFORMS:
        raise UserError(f"no native runner for architecture {arch!r}; choose one of {', '.join(WHEEL_PLATFORMS)}")
    root = cache_root() / "native" / "wheels" / f"executorch-{version}-{arch}"
    if (root / "executorch" / "lib").is_dir():
        return root / "executorch"
    with tempfile.TemporaryDirectory(dir=_make(root.parent)) as scratch:
        command = [sys.executable, "-m", "pip", "download", f"executorch=={version}", "--no-deps", "--quiet",
                   "--platform", WHEEL_PLATFORMS[arch], "--python-version", "3.11", "--only-binary=:all:",
                   "--dest", scratch]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(scratch).glob("executorch-*.whl"))
        if done.returncode or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise UserError(f"cannot download the executorch {version} wheel for {arch} ({last}); check the "
                            "network or pip's index settings")
        unpacked = Path(scratch) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(unpacked, [name for name in wheel.namelist()
                                        if name.startswith(("executorch/include/", "executorch/lib/"))])
        os.replace(unpacked, root)
    return root / "executorch"


def needed(path: Path) -> list[str]:
    """The NEEDED entries of an ELF file (readelf reads any architecture)."""
    dynamic = subprocess.run(["readelf", "-d", "--wide", str(path)], capture_output=True, text=True, check=True)
    return _NEEDED.findall(dynamic.stdout)


def symbol_versions(paths: list[Path]) -> dict[str, str]:
    """The newest GLIBC, GLIBCXX and CXXABI symbol versions any of ``paths`` requires (the device's C and C++
    libraries must provide them)."""
    newest: dict[str, tuple[int, ...]] = {}
    for path in paths:
        versions = subprocess.run(["readelf", "-V", "--wide", str(path)], capture_output=True, text=True, check=True)
        for library, version in _SYMBOL_VERSION.findall(versions.stdout):
            newest[library] = max(newest.get(library, ()), tuple(int(part) for part in version.split(".")))
    return {library: ".".join(map(str, version)) for library, version in sorted(newest.items())}


def _make(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compile(compiler: str, wheel: Path, version: str, output: Path) -> None:
    include = wheel / "include"
    command = [compiler, *FLAGS, *(f"-D{define}" for define in DEFINES), f'-DLPMR_EXECUTORCH_VERSION="{version}"',
               f"-isystem{include}", f"-isystem{include / 'executorch/runtime/core/portable_type/c10'}",
               str(SOURCE_DIR / "runner.cpp"), "-o", str(output), f"-L{wheel / 'lib'}",
               f"-Wl,-rpath-link,{wheel / 'lib'}", "-Wl,-rpath,$ORIGIN/lib", "-Wl,--no-as-needed",
               *(f"-l{library}" for library in LINKED)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()[-1:]
        raise UserError(f"the native runner did not compile with {compiler}: {errors[0] if errors else '?'}")


def _bundle_libraries(runner: Path, wheel_lib: Path, bundle_lib: Path) -> dict[str, list[str]]:
    """Copy the wheel libraries ``runner`` needs, transitively; returns every bundled file's NEEDED list."""
    record, pending = {RUNNER: needed(runner)}, list(needed(runner))
    while pending:
        name = pending.pop()
        if name in record or not (wheel_lib / name).is_file():
            continue  # a system library (libc, libstdc++...) or one already copied
        shutil.copy2(wheel_lib / name, bundle_lib / name)
        record[name] = needed(bundle_lib / name)
        pending += record[name]
    return record


def build_runner(arch: str) -> Path:
    """The runner bundle for ``arch`` ("x86_64", "aarch64"): built once per content key, then from the cache."""
    compiler, package = toolchain(arch)
    if shutil.which(compiler) is None:
        raise UserError(f"cannot build the native runner for {arch}: {compiler} is not installed; install the "
                        f"Debian package {package} (apt-get install {package})")
    version = executorch_version()
    compiler_line = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    key = hashlib.sha256(json.dumps({"arch": arch, "executorch": version, "compiler": compiler_line,
                                     "flags": [*FLAGS, *DEFINES, *LINKED],
                                     "sources": {name: _sha256(SOURCE_DIR / name) for name in SOURCES}},
                                    sort_keys=True).encode()).hexdigest()[:16]
    bundle = cache_root() / "native" / f"{arch}-{key}"
    if (bundle / RECORD).is_file():
        return bundle
    wheel = wheel_root(arch, version)
    with tempfile.TemporaryDirectory(dir=_make(bundle.parent)) as scratch:
        staging = Path(scratch) / "bundle"
        _make(staging / "lib")
        _compile(compiler, wheel, version, staging / RUNNER)
        needs = _bundle_libraries(staging / RUNNER, wheel / "lib", staging / "lib")
        files = {str(path.relative_to(staging)): path for path in sorted(staging.rglob("*")) if path.is_file()}
        record = {"arch": arch, "executable": RUNNER, "versions": {"executorch": version}, "compiler": compiler_line,
                  "key": key,
                  "files": {name: _sha256(path) for name, path in files.items()}, "needed": needs,
                  "system_libraries": sorted({name for names in needs.values() for name in names} - set(needs)),
                  "requires": symbol_versions(list(files.values())),
                  "footprint_mb": sum(path.stat().st_size for path in files.values()) / 1e6}
        (staging / RECORD).write_text(json.dumps(record, indent=1))
        try:
            os.replace(staging, bundle)
        except OSError:  # another process built the same bundle meanwhile
            if not (bundle / RECORD).is_file():
                raise
    return bundle


if __name__ == "__main__":
    for requested in sys.argv[1:] or [platform.machine()]:
        try:
            built = build_runner(requested)
        except UserError as error:
            sys.exit(f"error: {error}")
        print(f"{requested}: {built} ({json.loads((built / RECORD).read_text())['footprint_mb']:.1f} MB)")
