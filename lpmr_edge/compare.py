"""Paired comparison of a result directory against its reference (e.g. INT8 against FP32) on the same samples.

delta = result - reference. Each delta's 95% interval is the BCa interval of a paired bootstrap: the
rows (samples) of both results are resampled together, with the same stratification as in the suite
(``lpmr_edge.stats.paired_metric_decisions``); its ``p_value`` is the two-sided paired bootstrap test
that inverts that interval. A change is significant when the interval excludes 0 (p < 5%); "improved"
respects each metric's direction (each family's ``MetricSpec``). Accuracy also gets an exact McNemar test.
Given a practical margin m per metric (``margins``, by metric key; default 0), each delta also carries
``p_beyond_margin`` (two-sided test that |delta| > m: p < 5% iff the interval lies wholly beyond ±m) and
``p_equivalence`` (TOST within ±m; None at m = 0), and its verdict is "equivalent within ±m" when TOST rejects.

``store_comparison`` keeps a comparison in the result's directory (``COMPARISON_FILE``), keyed by both results'
metrics files and the settings, so ``lpmr-edge run`` computes each one as a step of its own, beside the others,
and the report (``stored_comparison``) reads it instead of computing it again.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.manifest import atomic_write_json, read_json, sha256_file, sha256_json
from lpmr_edge.results import read_result
from lpmr_edge.samples import score_orders
from lpmr_edge.stats import (
    BCA,
    CONFIDENCE,
    EQUIVALENT,
    MetricRule,
    PairedDecision,
    mcnemar_exact,
    paired_metric_decisions,
)
from lpmr_edge.suite.config import stored_suite
from lpmr_edge.suite.families.base import Compared, MetricSpec
from lpmr_edge.suite.families.spectrum import DEFAULT_HEAD_FRACTION, spectrum_of_results
from lpmr_edge.suite.outputs import METRICS_FILE
from lpmr_edge.suite.reuse import scored_alike
from lpmr_edge.suite.run import load_suite_outputs, suite_probes


def _delta(label: str, spec: MetricSpec, decision: PairedDecision) -> dict[str, Any]:
    delta, ci = decision.difference, list(decision.ci) if decision.ci else [None, None]
    significant = decision.p_superiority < 1.0 - CONFIDENCE
    lower_is_better = not spec.higher_is_better
    verdict = (f"equivalent within ±{decision.margin:g}" if decision.decision == EQUIVALENT
               else "no significant change" if not significant
               else "improved" if spec.better(delta, 0.0) else "worsened")
    interval = "undefined" if ci[0] is None else f"{ci[0]:+.4f} to {ci[1]:+.4f}"
    amount = f" by {abs(delta):.4f}" if significant else ""
    return {"label": label, "metric": spec.key, "result": decision.value, "reference": decision.reference_value, "delta": delta,
            "ci": ci, "ci_method": BCA, "p_value": decision.p_superiority, "n": decision.n,
            "significant": significant, "lower_is_better": lower_is_better, "verdict": verdict,
            "margin": decision.margin, "p_beyond_margin": decision.p_beyond_margin,
            "p_equivalence": decision.p_equivalence,
            "statement": f"{label}: {verdict}{amount} (delta {delta:+.4f}, {CONFIDENCE:.0%} CI {interval}, "
                         f"p={decision.p_superiority:.3g})"}


def _score_orders(compared: Compared) -> list[np.ndarray | None] | None:
    """For an OOD probe (its metrics depend only on the rows drawn), each table's rows by the reference's
    descending score: both sides' resamples then come nearly sorted (quantization rarely reorders scores), which
    the OOD metrics sort faster, and no number changes; None for other probes."""
    reference = compared.reference
    if reference.sort_key is not None:
        return [np.argsort(-table[reference.sort_key], kind="stable") if reference.sort_key in table else None
                for table in reference.tables]
    if compared.prefix.startswith("ood."):
        return score_orders(reference.tables, [name for name, _, _ in compared.values])
    return None


def _compare_probe(compared: Compared, n_resamples: int, seed: int,
                   margins: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Deltas of the compared values of one probe, keyed ``<prefix>.<value name with dots>``."""
    rules = {name: MetricRule(spec.higher_is_better, margins.get(spec.key, 0.0)) for name, _, spec in compared.values}
    decisions = paired_metric_decisions(compared.result.summary, compared.result.tables, compared.reference.tables,
                                        rules, n_resamples=n_resamples, seed=seed, orders=_score_orders(compared))
    return {f"{compared.prefix}.{name.replace('/', '.')}": _delta(label, spec, decisions[name])
            for name, label, spec in compared.values}


def _check_comparable(result_dir: Path, reference_dir: Path, suite: Any, reference_suite: Any, outputs: Mapping[str, Any],
                      reference_outputs: Mapping[str, Any]) -> None:
    if replace(suite, name="") != replace(reference_suite, name=""):
        raise UserError(f"{result_dir} and {reference_dir} were run with different suite settings; "
                        "re-run both with the same --suite, --dataset, --limit and --logit-scale")
    for name, stored in outputs.items():
        theirs = reference_outputs[name]
        if stored.dataset_sha256 != theirs.dataset_sha256 or not np.array_equal(stored.labels, theirs.labels):
            raise UserError(f"{result_dir} and {reference_dir} evaluated different samples for set '{name}'; "
                            "re-run both with the same suite, --seed and --limit")


def compare(result_dir: Path, reference_dir: Path, n_resamples: int | None = None, seed: int | None = None,
            head_fraction: float = DEFAULT_HEAD_FRACTION, margins: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Paired deltas (result - reference) with CIs, McNemar tests and the spectral summary; ``margins``
    (metric key -> practical margin in the metric's unit) add the margin tests to each delta."""
    result_dir, reference_dir = Path(result_dir), Path(reference_dir)
    result_meta, reference_meta = read_result(result_dir).raw, read_result(reference_dir).raw
    suite = stored_suite(result_meta, result_dir)
    reference_suite = stored_suite(reference_meta, reference_dir)
    outputs = load_suite_outputs(result_dir, suite)
    reference_outputs = load_suite_outputs(reference_dir, reference_suite)
    _check_comparable(result_dir, reference_dir, suite, reference_suite, outputs, reference_outputs)
    n_resamples = n_resamples or suite.bootstrap_resamples
    seed = result_meta["settings"]["seed"] if seed is None else seed
    mine, theirs = suite_probes(outputs, suite), suite_probes(reference_outputs, suite)
    comparison: dict[str, Any] = {}
    mcnemar: dict[str, Any] = {}
    for family, config in suite.families():
        for compared in family.comparisons(config, mine[family.name], theirs[family.name]):
            comparison.update(_compare_probe(compared, n_resamples, seed, margins or {}))
        mcnemar.update({name: mcnemar_exact(*correct)
                        for name, correct in family.mcnemar(mine[family.name], theirs[family.name]).items()})
    spectrum = spectrum_of_results(result_dir, reference_dir, head_fraction)
    return {
        "result": _identity(result_meta, result_dir), "reference": _identity(reference_meta, reference_dir),
        "suite": suite.name, "resamples": n_resamples, "seed": seed,
        "convention": f"delta = result - reference; {CONFIDENCE:.0%} paired BCa bootstrap interval "
                      f"({n_resamples} resamples, seed {seed}) and the two-sided paired bootstrap test inverting "
                      "it (p_value); significant when the interval excludes 0; p_beyond_margin and p_equivalence "
                      "test the change against each metric's margin",
        "deltas": comparison, "mcnemar": mcnemar,
        "spectrum": {name: value for name, value in spectrum.items() if name != "per_rank"},
    }


COMPARISON_FILE = "comparison.json"  # in the result's directory: {"inputs_sha256", "comparison"}


def _comparison_key(result_dir: Path, reference_dir: Path, n_resamples: int | None,
                    margins: Mapping[str, float]) -> str:
    return sha256_json({"result": sha256_file(Path(result_dir) / METRICS_FILE),
                        "reference": sha256_file(Path(reference_dir) / METRICS_FILE),
                        "resamples": n_resamples, "margins": sorted(margins.items())})


def stored_comparison(result_dir: Path, reference_dir: Path, n_resamples: int | None,
                      margins: Mapping[str, float]) -> dict[str, Any] | None:
    """``compare(result_dir, reference_dir, n_resamples, margins=margins)`` as ``store_comparison`` kept it,
    or None when none is kept for these two results (as they are now) and settings."""
    path = Path(result_dir) / COMPARISON_FILE
    if not path.is_file():
        return None
    kept = read_json(path, str(path))
    return kept["comparison"] if kept.get("inputs_sha256") == _comparison_key(result_dir, reference_dir, n_resamples,
                                                                               margins) else None


def store_comparison(result_dir: Path, reference_dir: Path, n_resamples: int | None,
                     margins: Mapping[str, float]) -> dict[str, Any]:
    """The comparison of ``compare``, kept in ``result_dir`` (written atomically; an up-to-date one is read).
    When either result took the per-sample outputs of another (``scored_alike``), the kept comparison of those
    two is restated for these instead of computed again, and the file says ``taken_from``."""
    kept = stored_comparison(result_dir, reference_dir, n_resamples, margins)
    if kept is not None:
        return kept
    key = _comparison_key(result_dir, reference_dir, n_resamples, margins)
    sources = [scored_alike(Path(directory)) or Path(directory) for directory in (result_dir, reference_dir)]
    taken = None if sources == [Path(result_dir), Path(reference_dir)] else \
        stored_comparison(sources[0], sources[1], n_resamples, margins)
    if taken is None:
        comparison, origin = compare(result_dir, reference_dir, n_resamples, margins=margins), {}
    else:  # the same outputs, metrics and settings: the same comparison, of these two results
        comparison = {**taken, "result": _identity(read_result(result_dir).raw, Path(result_dir)),
                      "reference": _identity(read_result(reference_dir).raw, Path(reference_dir))}
        origin = {"taken_from": {"result": str(sources[0]), "reference": str(sources[1]),
                                 "why": "both results hold the per-sample outputs and metrics of these (scored "
                                        "alike): their kept comparison is this one's"}}
    atomic_write_json(Path(result_dir) / COMPARISON_FILE, {"inputs_sha256": key, "comparison": comparison, **origin})
    return comparison


def _identity(result: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    return {"dir": str(directory), **{key: result[key] for key in ("model", "runtime", "precision",
                                                                    "executed_precision")}}
