"""Per-sample tables behind one metric of a result, for paired decisions between results (``pick``).

A result directory stores its per-sample outputs (``outputs/*.npz``); the suite it was scored with
(``metrics.json``'s ``suite``) rebuilds every family's probe from them. ``metric_samples`` picks the
probe values a ``MetricSpec`` reads (its ``paired`` key, one per instance, e.g. per OOD set) and joins
them into one summary over the tables *in sample order*, so two results on the same samples can be
resampled together (``lpmr_edge.stats.paired_decisions``). A metric over several instances combines
the instances' values (``MetricSpec.combined``: mean or worst), as ``lpmr_edge.results.read_estimate`` does.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.results import Result
from lpmr_edge.stats import Summary, Table
from lpmr_edge.suite.families import MetricSpec
from lpmr_edge.suite.families.base import Probe


@dataclass(frozen=True)
class MetricSamples:
    """One metric's summary (``{spec.key: value}``) and the per-sample tables it summarises."""

    summary: Summary
    tables: list[Table]
    suite: Mapping[str, Any]  # the stored suite (without its name): results pair only under the same suite
    n_resamples: int
    seed: int


def _joined(spec: MetricSpec, parts: Sequence[tuple[Probe, str]]) -> tuple[Summary, list[Table]]:
    """One summary over all parts' tables: the parts' values, each on its own slice of tables, combined."""
    bounds = np.cumsum([0, *(len(probe.tables) for probe, _ in parts)])

    def summary(tables: Sequence[Table]) -> dict[str, float]:
        values = [probe.summary(tables[start:end])[name]
                  for (probe, name), start, end in zip(parts, bounds[:-1], bounds[1:])]
        return {spec.key: spec.combined(values)}

    return summary, [table for probe, _ in parts for table in probe.tables]


def metric_samples(result: Result, spec: MetricSpec) -> MetricSamples:
    """The per-sample tables of ``spec`` for ``result``; UserError if they cannot be rebuilt (no stored
    outputs, an old result, or a suite that does not measure the metric)."""
    from lpmr_edge.suite.config import stored_suite
    from lpmr_edge.suite.run import load_suite_outputs, suite_probes

    suite = stored_suite(result.raw, result.directory)
    probes = suite_probes(load_suite_outputs(result.directory, suite), suite)
    wanted = spec.expand(spec.paired, result.raw["metrics"])
    found = {f"{compared.prefix}.{name.replace('/', '.')}": (compared.result, name)
             for family, config in suite.families()
             for compared in family.comparisons(config, probes[family.name], probes[family.name])
             for name, _, _ in compared.values}
    if not wanted or any(key not in found for key in wanted):
        raise UserError(f"{result.directory}: its suite does not measure {spec.label} per sample")
    summary, tables = _joined(spec, [found[key] for key in wanted])
    stored = {key: value for key, value in result.raw["suite"].items() if key != "name"}
    return MetricSamples(summary, tables, stored, suite.bootstrap_resamples, int(result.raw["settings"]["seed"]))


def outputs_digest(result: Result) -> str | None:
    """sha256 of a result's stored per-sample outputs (features, labels, groups of every set, in name
    order; None without outputs): results with equal digests produced identical outputs."""
    from lpmr_edge.suite.outputs import OUTPUTS_DIR

    files = sorted((result.directory / OUTPUTS_DIR).glob("*.npz"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        with np.load(path) as stored:
            digest.update(path.stem.encode())
            for name in ("features", "labels", "groups"):
                if name in stored.files:
                    digest.update(np.ascontiguousarray(stored[name]).tobytes())
    return digest.hexdigest()
