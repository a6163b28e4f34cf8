"""The reliability suite: metric families (``families``) run on evaluation sets through a runtime.

``config`` reads suites, ``outputs`` stores per-sample outputs and writes result directories, ``run``
plans, evaluates and scores. The names below are the suite's public API.
"""
from __future__ import annotations

from lpmr_edge.suite.config import BUILTIN_SUITES, SuiteConfig, load_suite, stored_suite, suite_from_mapping
from lpmr_edge.suite.families.base import EvalSet, Probe
from lpmr_edge.suite.families.classification import ID_SET, CalibrationConfig
from lpmr_edge.suite.families.corruptions import CorruptionConfig
from lpmr_edge.suite.families.ood import OodConfig
from lpmr_edge.suite.families.shift import SHIFT_SET, ShiftConfig
from lpmr_edge.suite.families.spurious import SPURIOUS_SET, SpuriousConfig
from lpmr_edge.suite.outputs import METRICS_FILE, SetOutputs, load_outputs, write_result
from lpmr_edge.suite.run import (
    EvalSettings,
    Progress,
    evaluate,
    headline_metrics,
    key_metrics,
    load_suite_outputs,
    progress_task,
    score_outputs,
    suite_probes,
    suite_set_names,
)

__all__ = ["BUILTIN_SUITES", "ID_SET", "METRICS_FILE", "SHIFT_SET", "SPURIOUS_SET", "CalibrationConfig",
           "CorruptionConfig", "EvalSet", "EvalSettings", "OodConfig", "Probe", "Progress", "SetOutputs",
           "ShiftConfig", "SpuriousConfig", "SuiteConfig", "evaluate", "headline_metrics", "key_metrics",
           "load_outputs", "load_suite", "load_suite_outputs", "progress_task", "score_outputs", "stored_suite",
           "suite_from_mapping", "suite_probes", "suite_set_names", "write_result"]
