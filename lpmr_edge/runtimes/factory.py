"""``open_runtime``: the one place that decides which runtime runs, and where (this process or a device)."""
from __future__ import annotations

from pathlib import Path

from lpmr_edge.backends import RUNTIME_NAMES, TORCH, backend
from lpmr_edge.devices.base import LOCAL, in_process
from lpmr_edge.devices.kinds import parse_device
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import read_json
from lpmr_edge.runtimes.base import Runtime


def open_runtime(runtime: str | None = None, model: str | None = None, artifact: Path | None = None,
                 threads: int | None = None, device: str = LOCAL, runner: str | None = None) -> Runtime:
    """The torch reference for ``model``, or the runtime an artifact's manifest names (``runtime``, if given,
    must agree), in this process for ``device`` ``local``, else on that device (``--device`` spec) through a
    ``DeviceRuntime`` whose ``describe()["device"]`` names it; ``runner`` picks the backend's device runner
    kind (default: the device spec's ``?runner=`` where the backend has that kind, else its first, the Python
    device server; ``native`` is ExecuTorch's C++ runner)."""
    if artifact is not None:
        artifact = Path(artifact)
        declared = read_json(artifact / "manifest.json", "artifact manifest").get("runtime")
        if runtime not in (None, declared):
            raise UserError(f"artifact {artifact} is for runtime '{declared}', not '{runtime}'; "
                            f"use --runtime {declared}")
        runtime = declared
    if not in_process(device):
        if artifact is None:
            raise UserError("--device runs an exported artifact: pass --artifact DIR (make one with "
                            "`lpmr-edge export`)")
        from lpmr_edge.runtimes.device import DeviceRuntime

        return DeviceRuntime(artifact, parse_device(device), threads, runner=runner)
    if runtime == TORCH or (runtime is None and artifact is None):
        if model is None:
            raise UserError("the torch runtime needs --model (e.g. --model lpmr-tiny-fmnist)")
        from lpmr_edge.models import load_model
        from lpmr_edge.runtimes.torch_runtime import TorchRuntime

        return TorchRuntime(load_model(model), threads=threads)
    if runtime not in RUNTIME_NAMES:
        raise UserError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIME_NAMES)}")
    if artifact is None:
        raise UserError(f"runtime '{runtime}' runs an exported artifact: pass --artifact DIR "
                        "(make one with `lpmr-edge export`)")
    return backend(runtime).runtime_type()(artifact, threads=threads)
