"""Loads an ExecuTorch artifact (.pte towers, XNNPACK) into the ExecuTorch Python runtime: the one loading code
of the host's ``ExecuTorchRuntime`` and of a device (lpmr_edge/devices/serve.py ships this file's source).

Standard library, numpy and executorch (with torch importable: its pybindings link libtorch) only, never
lpmr_edge; the loader contract is in lpmr_edge/runtimes/openvino/loader.py.

Threads: XNNPACK runs on ExecuTorch's one process-wide threadpool (default: the number of performance cores).
Its size can only be changed through the experimental ``_unsafe_reset_threadpool`` of the pybindings (there is
no environment variable), so the last artifact loaded in a process sets it for all of them.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

Infer = Callable[[Any], Any]
# In an OpenVINO-delegated artifact's executed_precision: the precision OpenVINO's CPU plugin defaults to here
# (that delegate cannot set one; lpmr_edge.runtimes.executorch.openvino_delegate.CPU_DEFAULT)
OPENVINO_CPU_DEFAULT = "ov-cpu-default"


def set_threads(threads: int) -> int:
    """Resize ExecuTorch's process-wide threadpool (used by XNNPACK); returns the size now in effect."""
    from executorch.extension.pybindings import portable_lib

    if threads < 1:
        raise ValueError(f"--threads {threads}: use at least 1 thread")
    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    return portable_lib._threadpool_get_thread_count()


def method_runner(program: bytes | Path, method: str = "forward") -> Infer:
    """``infer(batch)``: one batch through a program's ``method`` (a .pte path, or its bytes) in the Python
    runtime; a RuntimeError if ExecuTorch cannot load it."""
    import numpy as np
    import torch
    from executorch.runtime import Runtime

    loaded = Runtime.get().load_program(program).load_method(method)

    def infer(batch: Any, _program: bytes | Path = program) -> Any:  # the program's bytes live as long as this
        return loaded.execute([torch.from_numpy(np.ascontiguousarray(batch))])[0].numpy()

    return infer


def openvino_cpu_default(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The inference precision OpenVINO's x86 CPU plugin picks on this machine when none is set: bf16 where the
    CPU has AVX512-BF16 (AMX CPUs have it too), else f32 (its rule, read from the CPU flags: this loader imports
    no openvino; tests/test_executorch_openvino.py pins it to OpenVINO's answer)."""
    try:
        flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
                 for flag in line.split(":", 1)[1].split()}
    except OSError:
        return "bf16 or f32 (OpenVINO's CPU default; CPU flags unreadable)"
    return "bf16" if "avx512_bf16" in flags else "f32"


def executed_precision(config: dict[str, Any]) -> str:
    """The manifest's executed precision, with OpenVINO's CPU default resolved on this machine."""
    executed = config["executed_precision"]
    return executed.replace(OPENVINO_CPU_DEFAULT, openvino_cpu_default()) if OPENVINO_CPU_DEFAULT in executed \
        else executed


def load(directory: Path, manifest: dict[str, Any], threads: int) -> tuple[dict[str, Infer], dict[str, Any]]:
    """Load both towers' ``method`` with the manifest's backend, ExecuTorch's threadpool at ``threads``.

    An OpenVINO-delegated program is read into memory first: loaded from its path (memory-mapped), it crashed
    the first ``execute`` (executorch 1.5.1, openvino 2026.4.1; probably because the backend frees the mapped
    blob after ``ov_core_import_model`` while the imported model still reads from it)."""
    import executorch
    from executorch.runtime import Runtime

    config = manifest["runtime_config"]
    if not Runtime.get().backend_registry.is_available(config["backend"]):
        raise ImportError(f"the ExecuTorch build at {Path(executorch.__file__).parent} has no usable "
                          f"{config['backend']}; install the executorch wheel from PyPI, which includes XNNPACK and "
                          "OpenVINO (OpenvinoBackend also needs the openvino wheel)")
    threads = set_threads(threads)
    towers = {}
    for tower in manifest["towers"]:
        path = Path(directory) / manifest["towers"][tower]["file"]
        try:
            towers[tower] = method_runner(path.read_bytes() if config.get("delegate") == "openvino" else path,
                                          config["method"])
        except RuntimeError as error:
            raise ValueError(f"ExecuTorch {metadata.version('executorch')} cannot load the {tower} tower {path} "
                             f"({error}); re-export the artifact with this ExecuTorch version") from None
    return towers, {"version": metadata.version("executorch"), "threads": threads,
                    "executed_precision": executed_precision(config)}


def warnings(manifest: dict[str, Any], info: dict[str, Any], where: str) -> list[str]:
    """ExecuTorch executes what the artifact was lowered to; an OpenVINO-delegated one ignores the threads."""
    note = manifest["runtime_config"].get("threads_note")
    return [note] if note else []


def description(manifest: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """What a runtime's ``describe()`` adds for this backend: the delegate (artifacts exported before the
    ``delegate`` option are all XNNPACK's) and the delegation recorded at export."""
    return {"delegate": manifest["runtime_config"].get("delegate", "xnnpack"), "delegation": manifest.get("delegation")}
