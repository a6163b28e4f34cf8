"""Reliability-aware quantization search (`lpmr-edge tune`).

``space`` (what is tried, per runtime), ``splits`` (validation / test discipline), ``trials`` (one
configuration: export + validation suite; resumable store), ``verdict`` (selection rule, paired test-split
decision, Pareto plot) and ``search`` (the loop). Call ``tune(TuneRequest(...))``; reproduce the chosen
configuration from its artifact manifest with ``reproduce(artifact, out_root)``.
"""
from __future__ import annotations

from lpmr_edge.tune.search import TuneRequest, tune
from lpmr_edge.tune.space import SearchSpace, TrialConfig
from lpmr_edge.tune.splits import Splits
from lpmr_edge.tune.trials import reproduce
from lpmr_edge.tune.verdict import TuneConstraints, objective_spec

__all__ = ["SearchSpace", "Splits", "TrialConfig", "TuneConstraints", "TuneRequest", "objective_spec", "reproduce", "tune"]
