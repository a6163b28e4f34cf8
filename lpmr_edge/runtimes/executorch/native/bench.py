"""Per-call overhead of the native runner vs the Python runner on this host, for one ExecuTorch artifact.

    python -m lpmr_edge.runtimes.executorch.native.bench ARTIFACT_DIR [--calls N] [--threads T] [--rows R]

Both runners are started here (the native runner from this host's bundle, serve.py's Python server with this
interpreter), receive the same artifact and threads, and run the same calls of R rows through each tower,
interleaved call by call (native, Python, native, ...) so that load on the shared machine hits both alike.
Per call it records the runner's own seconds for its static batches (``batch_s``: execute only; the Python
runner's include torch.from_numpy and .numpy()) and the host's round trip (request written to reply read:
frames, .npy, pipes). Prints JSON: per runner and tower the median and p90 in ms, and the runners' peak RSS.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.backends import PYTHON_RUNNER, backend
from lpmr_edge.runtimes.executorch.native.build import RUNNER, build_runner
from lpmr_edge.runtimes.executorch.native.client import LocalRunner, python_server


def tower_inputs(manifest: dict[str, Any], rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs of ``rows`` rows in each tower's input shape and dtype (tokens below 256)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for tower, entry in manifest["towers"].items():
        shape = (rows, *entry["inputs"][0]["shape"][1:])
        inputs[tower] = (rng.standard_normal(shape, dtype=np.float32) if entry["inputs"][0]["dtype"] == "float32"
                         else rng.integers(0, 256, shape, dtype=np.int64))
    return inputs


def _summary(values: list[float]) -> dict[str, float]:
    milliseconds = 1000 * np.asarray(values)
    return {"median_ms": float(np.median(milliseconds)), "p90_ms": float(np.percentile(milliseconds, 90))}


def bench(artifact: Path, calls: int = 50, threads: int = 2, rows: int = 1) -> dict[str, Any]:
    """Interleaved per-call timings of the native and the Python runner on ``artifact`` (see the module doc)."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    inputs = tower_inputs(manifest, rows)
    runners = {"native": LocalRunner([str(build_runner(platform.machine()) / RUNNER)]), "python": python_server()}
    timings: dict[str, dict[str, dict[str, list[float]]]] = {
        kind: {tower: {"device": [], "round_trip": []} for tower in inputs} for kind in runners}
    loaded, loader = {}, backend("executorch").runner(PYTHON_RUNNER)  # the native runner ignores the loader
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for kind, runner in runners.items():
                runner.push(artifact, Path(workdir) / kind)
                loaded[kind], _ = runner.request({"op": "load", "threads": threads, "loader": loader.loader,
                                                  "modules": loader.modules}, loader.loader_source)
            for call in range(calls + 1):  # the first call of each runner warms it up and is not counted
                for kind, runner in runners.items():
                    for tower, batch in inputs.items():
                        began = time.perf_counter()
                        reply, _ = runner.features(tower, batch)
                        if call:
                            timings[kind][tower]["round_trip"].append(time.perf_counter() - began)
                            timings[kind][tower]["device"].append(sum(reply["batch_s"]))
            peak = {kind: runner.features("image", inputs["image"])[0]["peak_rss_kb"] / 1024
                    for kind, runner in runners.items()}
    finally:
        for runner in runners.values():
            runner.close()
    return {"artifact": str(artifact), "precision": manifest["precision"], "calls": calls, "rows": rows,
            "threads": {kind: facts["threads"] for kind, facts in loaded.items()},
            "versions": {kind: facts["version"] for kind, facts in loaded.items()}, "peak_rss_mb": peak,
            "towers": {kind: {tower: {what: _summary(values) for what, values in per_tower.items()}
                              for tower, per_tower in per_kind.items()} for kind, per_kind in timings.items()}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1)
    arguments = parser.parse_args()
    print(json.dumps(bench(arguments.artifact, arguments.calls, arguments.threads, arguments.rows), indent=1))
