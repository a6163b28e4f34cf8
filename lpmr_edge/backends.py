"""Every runtime backend as one record: the single place targets, export, devices, manifests and the CLI
read what a runtime is.

Adding a runtime = one folder ``lpmr_edge/runtimes/<name>/`` (``loader.py``, ``runtime.py``, ``export.py``)
plus one ``Backend`` in ``BACKENDS``. A record names its modules by path and this module imports only the
standard library, so every layer may read it (it sits with ``errors`` and ``manifest`` at the bottom).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lpmr_edge.errors import UserError

TORCH = "torch"  # the in-process FP32 reference (lpmr_edge/runtimes/torch_runtime.py): no artifact, no record
PYTHON_RUNNER = "python"
NATIVE_RUNNER = "native"
ARM_OPENVINO_INT8 = ("OpenVINO runs INT8 on ARM CPUs in simulation: no speed-up over FP32 (and INT8-activation "
                     "parity is unverified under emulation); use ExecuTorch for INT8 on ARM")


@dataclass(frozen=True)
class Runner:
    """One way a device runs a backend's artifacts. ``loader`` is the module whose source the device server
    (lpmr_edge/devices/serve.py) receives and runs: standard library + numpy + ``modules`` only; the host reads
    its ``warnings``/``description`` for every runner kind. A binary runner names a ``bundle`` builder instead
    of packages: "module:function" (device architecture) -> a bundle directory (format in
    lpmr_edge/devices/binary.py) whose files are copied to the device and started there, no Python involved."""

    kind: str
    loader: str
    packages: tuple[str, ...] = ()  # pip packages the device needs, installed at this host's versions
    modules: tuple[str, ...] = ()  # modules that must import on the device
    bundle: str | None = None  # "module:function": builds the binary runner's bundle for an architecture

    def build_bundle(self, arch: str) -> Path:
        """The binary runner's bundle for ``arch`` (built on this host, cached); only for a ``bundle`` runner."""
        assert self.bundle is not None, f"the {self.kind} runner is no binary runner"
        return _attribute(self.bundle)(arch)

    @property
    def loader_source(self) -> bytes:
        """The loader module's source, as shipped to a device."""
        return source_file(self.loader).read_bytes()


@dataclass(frozen=True)
class Backend:
    """What lpmr-edge knows about one runtime that runs exported artifacts."""

    name: str
    precisions: tuple[str, ...]
    file_suffix: str  # of a tower file, e.g. ".xml"
    runtime_class: str  # "module:Class", a ``Runtime`` whose constructor takes (artifact_dir, threads)
    exporter: str  # module with ``export_towers`` (contract: lpmr_edge/export/__init__.py)
    manifest_tools: tuple[str, ...]  # distributions whose versions every manifest records
    runners: Mapping[str, Runner]  # by kind; the first is the default
    option_types: Mapping[str, type] | None = None  # target options lpmr-edge checks (None: the exporter does)
    # "module:function" (options, "runtimes.<name>.options.", precisions) -> (problem, fix) of the first bad
    # value, or None; stdlib-only module
    option_check: str | None = None
    fused_head: bool = False  # can export a fused zero-shot head (--fuse-head)
    arch_warnings: Mapping[str, str] = field(default_factory=dict)  # target arch -> warning for integer precisions
    # precision -> the precision whose files its export writes (they differ only in what the runtime sets on
    # load): an export of one takes the other's files (lpmr_edge/export/__init__.py, ``same_files_artifact``)
    same_files: Mapping[str, str] = field(default_factory=dict)

    def files_precision(self, precision: str) -> str:
        """The precision whose files an export at ``precision`` writes (itself unless ``same_files`` says)."""
        return self.same_files.get(precision, precision)

    def runner(self, kind: str | None = None, strict: bool = True) -> Runner:
        """The runner of ``kind`` (default: the first); a UserError naming the kinds there are, or, not
        ``strict``, the default runner when this backend has no ``kind``."""
        kind = kind or next(iter(self.runners))
        if kind not in self.runners and not strict:
            return self.runner()
        if kind not in self.runners:
            raise UserError(f"runtime '{self.name}' has no '{kind}' runner; use one of {', '.join(self.runners)}")
        return self.runners[kind]

    def runtime_type(self) -> type:
        """The host ``Runtime`` class (imports the runtime package)."""
        return _attribute(self.runtime_class)

    def option_problem(self, options: Mapping[str, Any], where: str) -> tuple[str, str] | None:
        """(problem, fix) for the first bad target option value (``where``: its key prefix), or None."""
        return _attribute(self.option_check)(options, where, self.precisions) if self.option_check else None


def _attribute(path: str) -> Any:
    """``module:name`` imported."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def source_file(module: str) -> Path:
    """The source file of a module of this package, found without importing it."""
    package, *parts = module.split(".")
    assert package == __name__.split(".")[0], module
    return Path(__file__).parent.joinpath(*parts).with_suffix(".py")


def _python_runner(name: str, packages: tuple[str, ...], modules: tuple[str, ...]) -> dict[str, Runner]:
    return {PYTHON_RUNNER: Runner(PYTHON_RUNNER, f"lpmr_edge.runtimes.{name}.loader", packages, modules)}


BACKENDS: Mapping[str, Backend] = MappingProxyType({backend.name: backend for backend in (
    Backend(name="openvino", precisions=("fp32", "bf16", "fp16", "int8", "int8-w", "int4-w"), file_suffix=".xml",
            runtime_class="lpmr_edge.runtimes.openvino.runtime:OpenVinoRuntime",
            exporter="lpmr_edge.runtimes.openvino.export", manifest_tools=("openvino",),
            runners=_python_runner("openvino", ("openvino",), ("openvino",)),
            option_types={"performance_hint": str, "num_streams": int, "inference_precision": dict,
                          "dynamic_quantization_group_size": int, "cpu_pinning": bool},
            option_check="lpmr_edge.runtimes.openvino.options:check_options", fused_head=True,
            arch_warnings={"aarch64": ARM_OPENVINO_INT8},
            same_files={"bf16": "fp32"}),  # FP32 IR; bf16 is INFERENCE_PRECISION_HINT (runtime_config)
    Backend(name="executorch", precisions=("fp32", "int8", "int8-dyn", "int4-w"), file_suffix=".pte",
            runtime_class="lpmr_edge.runtimes.executorch.runtime:ExecuTorchRuntime",
            exporter="lpmr_edge.runtimes.executorch.export", manifest_tools=("executorch", "torchao"),
            # the Python runtime (pybindings) links libtorch: torch must import on the device
            runners={**_python_runner("executorch", ("executorch", "torch", "torchao"), ("torch", "executorch.runtime")),
                     # the C++ runner over the wheel's runtime libraries: no Python, numpy or torch on the device
                     NATIVE_RUNNER: Runner(NATIVE_RUNNER, "lpmr_edge.runtimes.executorch.loader",
                                           bundle="lpmr_edge.runtimes.executorch.native.build:build_runner")}),
)})
RUNTIME_NAMES = (TORCH, *BACKENDS)
RUNNER_KINDS = tuple(sorted({kind for record in BACKENDS.values() for kind in record.runners}))  # ?runner=, --runner


def backend(name: str) -> Backend:
    """The record of an artifact runtime; a UserError naming the runtimes there are."""
    if name not in BACKENDS:
        raise UserError(f"unknown runtime '{name}'; use one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def runtime_help() -> str:
    """The runtimes and their precisions, for CLI help text."""
    return "; ".join(f"{name}: {', '.join(record.precisions)}" for name, record in BACKENDS.items())
