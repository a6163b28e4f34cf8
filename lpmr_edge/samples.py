"""Per-sample tables behind one metric of a result, for paired decisions between results (``pick``).

A result directory stores its per-sample outputs (``outputs/*.npz``); the suite it was scored with
(``metrics.json``'s ``suite``) rebuilds every family's probe from them. ``metric_samples`` picks the
probe values a ``MetricSpec`` reads (``lpmr_edge.results.paired_keys``, the keys of ``compare``'s
deltas) and joins them into one summary over the tables *in sample order*, so two results on the same
samples can be resampled together (``lpmr_edge.stats.paired_decisions``). A mean over several instances
(the OOD sets) is the family's joint probe of their mean (the ID images drawn once for all sets), exactly
as ``compare`` and so the report test it; the worst of several instances joins the instances' own probes.

``with_joint_intervals`` gives results the joint bootstrap interval of every such mean (in place of the
stored-intervals fallback of ``lpmr_edge.results.read_estimate``), from the same probe and resamples.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.results import JOINT_BOOTSTRAP, Estimate, Result, joint_mean, paired_keys
from lpmr_edge.stats import Summary, Table, bca_estimates
from lpmr_edge.suite.families import METRICS, MetricSpec
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


@dataclass(frozen=True)
class _StoredValues:
    """Every value ``compare`` tests for one result: its key -> (probe, value name), rebuilt from the outputs."""

    found: Mapping[str, tuple[Probe, str]]
    suite: Any

    @classmethod
    def of(cls, result: Result) -> _StoredValues:
        from lpmr_edge.suite.config import stored_suite
        from lpmr_edge.suite.run import load_suite_outputs, suite_probes

        suite = stored_suite(result.raw, result.directory)
        probes = suite_probes(load_suite_outputs(result.directory, suite), suite)
        return cls({f"{compared.prefix}.{name.replace('/', '.')}": (compared.result, name)
                    for family, config in suite.families()
                    for compared in family.comparisons(config, probes[family.name], probes[family.name])
                    for name, _, _ in compared.values}, suite)

    def parts(self, result: Result, spec: MetricSpec) -> list[tuple[Probe, str]]:
        """The probe values ``spec`` reads (``paired_keys``); UserError if the suite does not measure them."""
        wanted = paired_keys(spec, result.raw["metrics"])
        if not wanted or any(key not in self.found for key in wanted):
            raise UserError(f"{result.directory}: its suite does not measure {spec.label} per sample")
        return [self.found[key] for key in wanted]


def metric_samples(result: Result, spec: MetricSpec) -> MetricSamples:
    """The per-sample tables of ``spec`` for ``result``; UserError if they cannot be rebuilt (no stored
    outputs, an old result, or a suite that does not measure the metric)."""
    stored_values = _StoredValues.of(result)
    summary, tables = _joined(spec, stored_values.parts(result, spec))
    stored = {key: value for key, value in result.raw["suite"].items() if key != "name"}
    return MetricSamples(summary, tables, stored, stored_values.suite.bootstrap_resamples,
                         int(result.raw["settings"]["seed"]))


def joint_estimates(result: Result, specs: Sequence[MetricSpec] = METRICS) -> dict[str, Estimate]:
    """The estimate of every mean over several instances among ``specs`` (``lpmr_edge.results.joint_mean``)
    with the BCa interval of the joint bootstrap of its instances, computed as the suite scores it (the
    family's probe of the mean, the suite's resamples and seed; ``JOINT_BOOTSTRAP``; its resamples emitted in
    ``score_orders``, which changes no number), by metric key; UserError if the per-sample outputs cannot be
    read."""
    means = [spec for spec in specs if joint_mean(spec, result.raw["metrics"])]
    if not means:
        return {}
    stored_values = _StoredValues.of(result)
    by_probe: dict[int, tuple[Probe, dict[str, str]]] = {}  # one bootstrap per probe, for all its values
    for spec in means:
        ((probe, name),) = stored_values.parts(result, spec)
        by_probe.setdefault(id(probe), (probe, {}))[1][spec.key] = name
    seed = int(result.raw["settings"]["seed"])
    estimates = {}
    for probe, names in by_probe.values():
        tables = probe.bootstrap_tables()
        scored = bca_estimates(probe.summary, tables, stored_values.suite.bootstrap_resamples, seed,
                               orders=score_orders(tables, names.values()))
        for key, name in names.items():
            low, high = scored[name]["ci"]
            estimates[key] = Estimate(scored[name]["value"], None if low is None else (low, high),
                                      method=JOINT_BOOTSTRAP)
    return estimates


def score_orders(tables: Sequence[Table], names: Iterable[str]) -> list[np.ndarray | None]:
    """For each table of a joint probe of means over sets, its rows by descending score (the column the value
    names ``<score>/<value>`` start with), None without that column: resamples emitted in this order hold the
    same rows, so the OOD metrics (which depend only on the rows drawn) are unchanged and sort faster."""
    scores = {name.partition("/")[0] for name in names}
    column = next(iter(scores)) if len(scores) == 1 else None
    return [np.argsort(-table[column], kind="stable") if column in table else None for table in tables]


def with_joint_intervals(results: Sequence[Result], specs: Sequence[MetricSpec] = METRICS) -> list[Result]:
    """``results`` with the joint bootstrap estimate (``joint_estimates``) of every mean over several
    instances among ``specs`` that does not have it yet, where the per-sample outputs are stored; the others
    keep the stored-intervals fallback (``lpmr_edge.results.BONFERRONI_MEAN``), which their ``method`` names."""
    updated = []
    for result in results:
        pending = [spec for spec in specs if spec.key in result.metrics
                   and result.metrics[spec.key].method != JOINT_BOOTSTRAP]
        try:
            joint = joint_estimates(result, pending) if pending else {}
        except UserError:
            joint = {}
        updated.append(replace(result, metrics={**result.metrics, **joint}) if joint else result)
    return updated


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
