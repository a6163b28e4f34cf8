"""Evaluation harness overhead: the share of an ``lpmr-edge eval`` run spent outside the runtime's calls.

    .venv/bin/python scripts/bench_eval.py ARTIFACT_DIR [EVAL OPTIONS...]   # e.g. --suite basic --threads 2

Runs ``lpmr-edge eval --artifact ARTIFACT_DIR`` once in a fresh process, into a temporary results directory
(so nothing is reused), and prints what the result's manifest recorded (``timing``):

* runtime s — the wall time inside the runtime's tower calls (one per static batch, text tower included);
* evaluate s — the wall time of the evaluation itself (planning and loading the sets, preprocessing, the
  runtime calls, text embeddings, scoring with bootstrap intervals), and its overhead = 1 - runtime / evaluate;
* command s — the whole command as the shell sees it, i.e. also interpreter start, imports and compiling the
  artifact, and its overhead = 1 - runtime / command.

Figures are printed, never asserted; the machine may be shared, so read them as one measurement.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lpmr_edge.manifest import machine_info


def measure(artifact: Path, options: list[str]) -> dict[str, float]:
    """Run one evaluation of ``artifact`` in a child process; returns the manifest's timing and the command's."""
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as scratch:
        command = [sys.executable, "-m", "lpmr_edge", "eval", "--artifact", str(artifact.resolve()),
                   "--out", str(Path(scratch) / "result"), *options]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=scratch,  # PYTHONPATH picks lpmr_edge
                       env={**os.environ, "LPMR_EDGE_LOG": str(Path(scratch) / "eval.log")})
        command_s = time.perf_counter() - start
        manifest = json.loads((Path(scratch) / "result" / "manifest.json").read_text())
        images = json.loads((Path(scratch) / "result" / "metrics.json").read_text())["datasets"]
    timing = manifest["timing"]
    return {**timing, "command_s": command_s, "command_overhead": 1 - timing["runtime_s"] / command_s,
            "images": sum(dataset["n"] for dataset in images.values()),
            "executed_precision": manifest["runtime"]["executed_precision"],
            "threads": manifest["runtime"]["threads"]}


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    artifact, options = Path(sys.argv[1]), sys.argv[2:]
    machine = machine_info()
    load = os.getloadavg()
    figures = measure(artifact, options)
    print(f"machine: {machine['cpu']} ({machine['arch']}, {machine['cores']} cores, {machine['node']}); load average "
          f"before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"eval --artifact {artifact} {' '.join(options)}: {figures['images']} images, executed "
          f"{figures['executed_precision']}, {figures['threads']} threads")
    print(f"runtime {figures['runtime_s']:.1f} s | evaluate {figures['wall_s']:.1f} s, overhead "
          f"{figures['overhead']:.1%} | command {figures['command_s']:.1f} s, overhead {figures['command_overhead']:.1%}")


if __name__ == "__main__":
    main()
