"""Where an OpenVINO image tower's time goes: per-node profiles and interleaved latency of several IRs.

    .venv/bin/python scripts/profile_openvino.py BASE [OTHER ...] [--threads 2] [--calls 30] [--set KEY=VALUE]

Each argument is an artifact directory (its manifest's ``runtime_config`` properties are used) or an
``image.xml`` file (compiled with the x86 target's properties: true f32, LATENCY, 1 stream, no pinning).
``--set KEY=VALUE`` overrides a CPU property for every model; ``--set N:KEY=VALUE`` for the N-th (0-based) only.

Prints, for each model:
* the median and the fastest latency, and the median process CPU time, of ``--calls`` calls without PERF_COUNT,
  with their speed-ups over the first model (all models timed round-robin in one loop, so the machine's load
  affects them alike; CPU time is the least affected by other processes);
* the per-node profile of ``--profile-calls`` calls with PERF_COUNT=YES, summed per node type and execution
  kernel (``exec_type``, e.g. ``brgemm_avx512_I8`` or ``jit_avx512_f32``): each node's fastest time (robust to
  another process taking the core), in ms and in % of the total;
* from the compiled runtime model, the compute layers per input/weight precision and how many Reorder,
  Convert and FakeQuantize nodes remain.

Figures are printed, never asserted; state the load average (printed) with them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from lpmr_edge.runtimes.openvino.loader import executed_layers

X86_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "ENABLE_CPU_PINNING": False}
LEFTOVER_TYPES = ("Reorder", "Convert", "FakeQuantize")


def model_source(path: Path) -> tuple[Path, dict[str, Any]]:
    """The image IR and the CPU properties to compile it with."""
    if path.is_dir():
        manifest = json.loads((path / "manifest.json").read_text())
        return path / manifest["towers"]["image"]["file"], dict(manifest["runtime_config"]["properties"])
    return path, dict(X86_PROPERTIES)


def parse_overrides(pairs: list[str], count: int) -> list[dict[str, str]]:
    """``[N:]KEY=VALUE`` pairs as one property dict per model."""
    overrides: list[dict[str, str]] = [{} for _ in range(count)]
    for pair in pairs:
        head, _, value = pair.partition("=")
        target, _, key = head.rpartition(":")
        for index in ([int(target)] if target else range(count)):
            overrides[index][key] = value
    return overrides


def profile(compiled: ov.CompiledModel, batch: np.ndarray, calls: int) -> dict[tuple[str, str], float]:
    """ms of each (node type, exec type): the sum over its nodes of each node's fastest time in ``calls`` profiled
    calls (the minimum discards the calls where another process took the core)."""
    request = compiled.create_infer_request()
    request.infer({0: batch})
    fastest: dict[tuple[str, str, str], float] = {}
    for _ in range(calls):
        request.infer({0: batch})
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                key = (info.node_type, info.exec_type, info.node_name)
                fastest[key] = min(fastest.get(key, np.inf), info.real_time.total_seconds() * 1e3)
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for (node_type, exec_type, _), ms in fastest.items():
        totals[(node_type, exec_type)] += ms
    return dict(totals)


def leftovers(compiled: ov.CompiledModel) -> dict[str, Counter]:
    """Per leftover node type (Reorder, Convert, FakeQuantize), counts per output precision in the runtime model."""
    found: dict[str, Counter] = {name: Counter() for name in LEFTOVER_TYPES}
    for node in compiled.get_runtime_model().get_ordered_ops():
        layer = node.get_rt_info()["layerType"].astype(str)
        if layer in found:
            found[layer][node.get_rt_info()["outputPrecisions"].astype(str)] += 1
    return {layer: counts for layer, counts in found.items() if counts}


def interleaved_times(requests: list[ov.InferRequest], batch: np.ndarray,
                      calls: int) -> tuple[list[list[float]], list[list[float]]]:
    """Wall and process CPU ms of ``calls`` calls of each request, timed round-robin. CPU time (all threads of
    this process) counts the work done, not the waits while another process holds a core."""
    wall: list[list[float]] = [[] for _ in requests]
    cpu: list[list[float]] = [[] for _ in requests]
    for request in requests:
        request.infer({0: batch})
    for _ in range(calls):
        for index, request in enumerate(requests):
            start, start_cpu = time.perf_counter(), time.process_time()
            request.infer({0: batch})
            wall[index].append((time.perf_counter() - start) * 1e3)
            cpu[index].append((time.process_time() - start_cpu) * 1e3)
    return wall, cpu


def print_profile(name: str, totals: dict[tuple[str, str], float], top: int) -> None:
    overall = sum(totals.values())
    print(f"\n{name}: sum of per-node fastest times {overall:.2f} ms")
    by_type: dict[str, float] = defaultdict(float)
    for (node_type, _), ms in totals.items():
        by_type[node_type] += ms
    print("  by node type: " + ", ".join(f"{node_type} {ms:.2f} ms ({100 * ms / overall:.1f}%)"
                                         for node_type, ms in sorted(by_type.items(), key=lambda kv: -kv[1])[:top]))
    for (node_type, exec_type), ms in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {node_type:<18} {exec_type:<32} {ms:9.2f} ms {100 * ms / overall:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30, help="timed calls per model (no PERF_COUNT)")
    parser.add_argument("--profile-calls", type=int, default=10, help="calls per model with PERF_COUNT=YES")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="[N:]KEY=VALUE")
    parser.add_argument("--top", type=int, default=14, help="rows of each profile")
    args = parser.parse_args()
    core = ov.Core()
    sources = [model_source(path) for path in args.models]
    overrides = parse_overrides(args.overrides, len(sources))
    models = [core.read_model(xml) for xml, _ in sources]
    shape = [dim.get_length() for dim in models[0].inputs[0].get_partial_shape()]
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    print(f"load average {os.getloadavg()}, OpenVINO {ov.get_version()}, batch {shape[0]}, threads {args.threads}")
    plain, profiled = [], []
    for index, ((xml, properties), override, model) in enumerate(zip(sources, overrides, models)):
        properties = {**properties, **override, "INFERENCE_NUM_THREADS": args.threads}
        plain.append(core.compile_model(model, "CPU", properties))
        profiled.append(core.compile_model(model, "CPU", {**properties, "PERF_COUNT": True}))
        print(f"  [{index}] {xml}: {properties}")
    wall, cpu = interleaved_times([compiled.create_infer_request() for compiled in plain], batch, args.calls)
    print(f"load average after timing {os.getloadavg()}")
    for name, series in (("wall median", wall), ("wall fastest", wall), ("CPU median", cpu)):
        figures = [(min if name == "wall fastest" else statistics.median)(values) for values in series]
        print(f"{name}: " + ", ".join(f"[{index}] {ms:.1f} ms ({figures[0] / ms:.2f}x)"
                                       for index, ms in enumerate(figures)))
    for index, (path, compiled) in enumerate(zip(args.models, profiled)):
        print_profile(f"[{index}] {path}", profile(compiled, batch, args.profile_calls), args.top)
        print(f"  compute layers (inputs/weights): {executed_layers(compiled)}")
        print(f"  leftovers: {({layer: dict(counts) for layer, counts in leftovers(compiled).items()})}")


if __name__ == "__main__":
    main()
