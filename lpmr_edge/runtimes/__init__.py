"""Runtimes behind one interface: ``open_runtime`` picks the implementation."""
from __future__ import annotations

from pathlib import Path

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import read_json
from lpmr_edge.runtimes.base import Runtime

RUNTIME_NAMES = ("torch", "openvino", "executorch")


def open_runtime(runtime: str | None = None, model: str | None = None, artifact: Path | None = None,
                 threads: int | None = None) -> Runtime:
    """Open the torch reference for ``model``, or the runtime named by an artifact's manifest."""
    if artifact is not None:
        artifact = Path(artifact)
        manifest = read_json(artifact / "manifest.json", "artifact manifest")
        declared = manifest.get("runtime")
        if runtime not in (None, declared):
            raise UserError(f"artifact {artifact} is for runtime '{declared}', not '{runtime}'; "
                            f"use --runtime {declared}")
        runtime = declared
    if runtime == "torch" or (runtime is None and artifact is None):
        if model is None:
            raise UserError("the torch runtime needs --model (e.g. --model lpmr-tiny-fmnist)")
        from lpmr_edge.models import load_model
        from lpmr_edge.runtimes.torch_runtime import TorchRuntime

        return TorchRuntime(load_model(model), threads=threads)
    if artifact is None:
        raise UserError(f"runtime '{runtime}' runs an exported artifact: pass --artifact DIR "
                        "(make one with `lpmr-edge export`)")
    if runtime == "openvino":
        from lpmr_edge.runtimes.openvino import OpenVinoRuntime

        return OpenVinoRuntime(artifact, threads=threads)
    if runtime == "executorch":
        from lpmr_edge.runtimes.executorch import ExecuTorchRuntime

        return ExecuTorchRuntime(artifact, threads=threads)
    raise UserError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIME_NAMES)}")
