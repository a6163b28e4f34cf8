"""Checks of the OpenVINO options a target file may set (``[runtimes.openvino] options = {...}``)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HINTS = ("f32", "bf16", "f16")  # INFERENCE_PRECISION_HINT values a target may map a precision to


def check_options(options: Mapping[str, Any], where: str, precisions: tuple[str, ...]) -> tuple[str, str] | None:
    """(problem, fix) for the first bad value in ``options`` (types already checked), or None."""
    if options.get("performance_hint", "LATENCY") not in ("LATENCY", "THROUGHPUT"):
        return f"'{where}performance_hint' is {options['performance_hint']!r}", "use LATENCY or THROUGHPUT"
    for key in ("num_streams", "dynamic_quantization_group_size"):
        if options.get(key, 1) < (1 if key == "num_streams" else 0):
            return f"'{where}{key}' is {options[key]}", "use a non-negative count (num_streams >= 1)"
    for precision, hint in options.get("inference_precision", {}).items():
        if precision not in precisions or hint not in HINTS:
            return (f"'{where}inference_precision' maps {precision!r} to {hint!r}",
                    f"map precisions ({', '.join(precisions)}) to one of {', '.join(HINTS)}")
    return None
