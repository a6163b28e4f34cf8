"""The reliability suite: metric families (``families``) run on evaluation sets through a runtime.

``config`` reads suites, ``outputs`` stores per-sample outputs and writes result directories, ``run``
plans, evaluates and scores. The names below are the suite's public API; they are imported on first
use, so that reading results (``lpmr_edge.results`` imports ``suite.families``) does not import the
runtimes and models ``run`` needs.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "config": ("BUILTIN_SUITES", "SuiteConfig", "load_suite", "stored_suite", "suite_from_mapping"),
    "families.base": ("Probe",),
    "families.classification": ("ID_SET", "CalibrationConfig"),
    "families.corruptions": ("CorruptionConfig",),
    "families.ood": ("OodConfig",),
    "families.shift": ("SHIFT_SET", "ShiftConfig"),
    "families.spurious": ("SPURIOUS_SET", "SpuriousConfig"),
    "outputs": ("METRICS_FILE", "EvalSet", "SetOutputs", "load_outputs", "write_result"),
    "run": ("Collected", "EvalSettings", "Progress", "collect", "evaluate", "finish", "headline_metrics", "key_metrics", "load_suite_outputs",
            "progress_task", "score_outputs", "suite_probes", "suite_set_names"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
