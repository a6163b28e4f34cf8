"""On-device runner: run one exported artifact on an input .npy and write the output .npy.

Standalone on purpose: it is copied to the device and imports only the standard library, numpy
and the runtime being measured (executorch or openvino), never lpmr_edge.

    python runner.py --runtime executorch --artifact model.pte --input x.npy --output y.npy \
        [--threads 2] [--batch-size 8] [--meta meta.json]

The input is split along axis 0 into batches of --batch-size (default: one batch) and the
outputs are concatenated. The JSON written to --meta records import, load and per-batch wall
times and the peak RSS of the process, and where they were measured. Under emulation (the host
sets LPMR_EDGE_EMULATED=1) the timings are marked as emulated, not device latencies, and the
RSS is QEMU's, translated code included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = {"executorch": ".pte", "openvino": ".xml"}

Infer = Callable[[np.ndarray], np.ndarray]


class RunnerError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


def load_executorch(artifact: Path, threads: int) -> tuple[Infer, dict[str, Any]]:
    """Load a .pte with the ExecuTorch Python runtime (its pybindings take torch tensors)."""
    start = time.perf_counter()
    import torch  # only to hand tensors to the runtime, which links libtorch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    import_s = time.perf_counter() - start

    portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(artifact).load_method("forward")
    if method is None:
        raise RunnerError(f"{artifact.name} has no 'forward' method")

    def infer(batch: np.ndarray) -> np.ndarray:
        outputs = method.execute([torch.from_numpy(batch)])
        if len(outputs) != 1:
            raise RunnerError(f"expected one output tensor, got {len(outputs)}")
        return outputs[0].numpy()

    return infer, {
        "import_s": import_s,
        "runtime_version": version("executorch"),
        "threads": portable_lib._threadpool_get_thread_count(),
    }


def load_openvino(artifact: Path, threads: int) -> tuple[Infer, dict[str, Any]]:
    """Compile an OpenVINO IR (.xml beside its .bin) for the CPU in true fp32."""
    start = time.perf_counter()
    import openvino

    import_s = time.perf_counter() - start

    compiled = openvino.Core().compile_model(
        str(artifact), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    )
    if len(compiled.outputs) != 1:
        raise RunnerError(f"expected one output, the model has {len(compiled.outputs)}")
    request = compiled.create_infer_request()

    def infer(batch: np.ndarray) -> np.ndarray:
        return np.array(request.infer([batch])[0], copy=True)

    return infer, {
        "import_s": import_s,
        "runtime_version": openvino.get_version(),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
    }


def run(args: argparse.Namespace) -> None:
    """Load, run every batch, and write the output .npy and the timing JSON."""
    if not args.artifact.is_file():
        raise RunnerError(f"artifact not found: {args.artifact}")
    if args.artifact.suffix != SUFFIXES[args.runtime]:
        raise RunnerError(f"{args.runtime} needs a {SUFFIXES[args.runtime]} file, got {args.artifact.name}")
    if args.runtime == "openvino" and not args.artifact.with_suffix(".bin").is_file():
        raise RunnerError(f"{args.artifact.with_suffix('.bin').name} is missing beside {args.artifact.name}")
    if args.threads < 1:
        raise RunnerError("--threads must be at least 1")
    try:
        data = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise RunnerError(f"cannot read input {args.input}: {e}") from e
    if data.ndim == 0 or len(data) == 0:
        raise RunnerError(f"input {args.input} has no samples along axis 0")
    batch_size = args.batch_size or len(data)
    if batch_size < 1:
        raise RunnerError("--batch-size must be at least 1")

    start = time.perf_counter()
    load = load_executorch if args.runtime == "executorch" else load_openvino
    try:
        infer, info = load(args.artifact, args.threads)
    except RuntimeError as e:
        raise RunnerError(f"{args.runtime} could not load {args.artifact.name}: {e}") from e
    load_s = time.perf_counter() - start - info["import_s"]

    outputs, batches = [], []
    for i in range(0, len(data), batch_size):
        batch = np.ascontiguousarray(data[i : i + batch_size])
        t0 = time.perf_counter()
        try:
            outputs.append(infer(batch))
        except RuntimeError as e:
            raise RunnerError(f"inference failed on samples {i}..{i + len(batch) - 1}: {e}") from e
        batches.append({"size": len(batch), "wall_s": time.perf_counter() - t0})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, np.concatenate(outputs))

    if args.meta is not None:
        emulated = os.environ.get("LPMR_EDGE_EMULATED") == "1"
        meta = {
            "runtime": args.runtime,
            "artifact": args.artifact.name,
            **info,
            "batch_size": batch_size,
            "load_s": load_s,
            "batches": batches,
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "measured_on": {
                "machine": platform.machine(),
                "system": platform.system(),
                "python": platform.python_version(),
                "emulated": emulated,
            },
            "timing": "emulated: not a device latency" if emulated else "measured on this device",
        }
        args.meta.parent.mkdir(parents=True, exist_ok=True)
        args.meta.write_text(json.dumps(meta, indent=1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime", required=True, choices=sorted(SUFFIXES))
    p.add_argument("--artifact", required=True, type=Path, help=".pte, or .xml with its .bin beside it")
    p.add_argument("--input", required=True, type=Path, help=".npy, samples along axis 0")
    p.add_argument("--output", required=True, type=Path, help=".npy to write")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=0, help="0: the whole input as one batch")
    p.add_argument("--meta", type=Path, help="JSON to write: load and per-batch wall times, peak RSS")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except RunnerError as e:
        print(f"runner: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
