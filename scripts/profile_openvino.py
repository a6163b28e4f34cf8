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
  Convert and FakeQuantize nodes remain;
* the same profile per layer role of a ViT image tower (q, k, v, out_proj, the fused attention kernel, MLP,
  patch convolution, ...), for every model side by side, with the first model's time over each other's.

Figures are printed, never asserted; state the load average (printed) with them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
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
# Layer roles of an open_clip ViT image tower, matched in order against a runtime node's original layer names
# (nodes that match none keep their node type as role).
ROLES = (("q", r"attention/MatMul(/|,|$)"), ("k", r"attention/MatMul_1(/|,|$)"), ("v", r"attention/MatMul_2(/|,|$)"),
         ("out_proj", r"attention/MatMul_3"), ("attention kernel", r"Softmax"), ("mlp.c_fc", r"mlp\.c_fc"),
         ("mlp.c_proj", r"mlp\.c_proj"), ("patch conv", r"conv1"),
         ("smooth-quant/quantize", r"nncf_smooth_quant|fq_output"), ("residual add", r"aten::add"),
         ("layer norm", r"layer_norm"), ("final projection", r"aten::matmul"))


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


def profile(compiled: ov.CompiledModel, batch: np.ndarray, calls: int) -> dict[tuple[str, str, str], float]:
    """Each executed node's fastest ms in ``calls`` profiled calls, keyed by (node type, exec type, role); the
    minimum discards the calls where another process took the core."""
    original = {node.get_friendly_name(): node.get_rt_info()["originalLayersNames"].astype(str)
                for node in compiled.get_runtime_model().get_ordered_ops()}
    request = compiled.create_infer_request()
    request.infer({0: batch})
    fastest: dict[tuple[str, str, str], float] = {}
    for _ in range(calls):
        request.infer({0: batch})
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                key = (info.node_type, info.exec_type, info.node_name)
                fastest[key] = min(fastest.get(key, np.inf), info.real_time.total_seconds() * 1e3)
    totals: dict[tuple[str, str, str], float] = defaultdict(float)
    for (node_type, exec_type, name), ms in fastest.items():
        names = original.get(name, name)
        role = next((role for role, pattern in ROLES if re.search(pattern, names)), node_type)
        totals[(node_type, exec_type, role)] += ms
    return dict(totals)


def summed(totals: dict[tuple[str, str, str], float], *fields: int) -> dict[tuple[str, ...], float]:
    """``totals`` summed over the key fields not in ``fields`` (0: node type, 1: exec type, 2: role)."""
    sums: dict[tuple[str, ...], float] = defaultdict(float)
    for key, ms in totals.items():
        sums[tuple(key[field] for field in fields)] += ms
    return dict(sums)


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


def print_profile(name: str, totals: dict[tuple[str, str, str], float], top: int) -> None:
    overall = sum(totals.values())
    print(f"\n{name}: sum of per-node fastest times {overall:.2f} ms")
    for title, fields in (("by node type", (0,)), ("by node type and kernel", (0, 1))):
        rows = sorted(summed(totals, *fields).items(), key=lambda kv: -kv[1])[:top]
        print(f"  {title}: " + ", ".join(f"{' '.join(key)} {ms:.2f} ms ({100 * ms / overall:.1f}%)" for key, ms in rows))


def print_roles(names: list[str], profiles: list[dict[tuple[str, str, str], float]]) -> None:
    """Per layer role: each model's ms and % of its total, and the first model's ms over each other's."""
    by_role = [summed(totals, 2) for totals in profiles]
    overall = [sum(roles.values()) for roles in by_role]
    print("\nby layer role (ms, % of the model's total, first model's time / this model's):")
    print(f"  {'role':<24}" + "".join(f"{name:>30}" for name in names))
    for role in sorted({key for roles in by_role for key in roles}, key=lambda key: -by_role[0].get(key, 0)):
        cells = []
        for roles, total in zip(by_role, overall):
            ms = roles.get(role, 0.0)
            speed_up = f"{by_role[0][role] / ms:5.2f}x" if ms and role in by_role[0] else "     -"
            cells.append(f"{ms:10.2f} ({100 * ms / total:4.1f}%) {speed_up}")
        print(f"  {role[0]:<24}" + "".join(f"{cell:>30}" for cell in cells))
    print(f"  {'total':<24}" + "".join(f"{total:10.2f}        {overall[0] / total:5.2f}x".rjust(30) for total in overall))


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
    profiles = [profile(compiled, batch, args.profile_calls) for compiled in profiled]
    for index, (path, compiled, totals) in enumerate(zip(args.models, profiled, profiles)):
        print_profile(f"[{index}] {path}", totals, args.top)
        print(f"  compute layers (inputs/weights): {executed_layers(compiled)}")
        print(f"  leftovers: {({layer: dict(counts) for layer, counts in leftovers(compiled).items()})}")
    print_roles([f"[{index}]" for index in range(len(profiles))], profiles)


if __name__ == "__main__":
    main()
