"""Paired comparison of a result directory against its reference (e.g. INT8 against FP32) on the same samples.

delta = result - reference. Each delta's 95% interval comes from a paired bootstrap: the rows
(samples) of both results are resampled together, with the same stratification as in the suite.
A change is significant when the interval excludes 0; "improved" respects each metric's direction
(each family's ``MetricSpec``). Accuracy also gets an exact McNemar test.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.results import read_result
from lpmr_edge.stats import CONFIDENCE, Table, bootstrap_ci, mcnemar_exact
from lpmr_edge.suite.config import stored_suite
from lpmr_edge.suite.families.base import Compared, MetricSpec, Probe
from lpmr_edge.suite.families.spectrum import DEFAULT_HEAD_FRACTION, spectrum_of_results
from lpmr_edge.suite.run import load_suite_outputs, suite_probes

RESULT, REFERENCE = "result:", "reference:"


def paired_probe(result: Probe, reference: Probe) -> Probe:
    """A probe whose summary is result minus reference, resampling both results' rows together."""
    tables = [{**{RESULT + name: column for name, column in mine.items()},
               **{REFERENCE + name: column for name, column in theirs.items()}}
              for mine, theirs in zip(result.tables, reference.tables)]

    def side(joint: list[Table], prefix: str) -> list[Table]:
        return [{name.removeprefix(prefix): column for name, column in table.items() if name.startswith(prefix)}
                for table in joint]

    def summary(joint: list[Table]) -> dict[str, float]:
        mine, theirs = result.summary(side(joint, RESULT)), reference.summary(side(joint, REFERENCE))
        return {name: mine[name] - theirs[name] for name in mine}

    return Probe(summary, tables, RESULT + result.sort_key if result.sort_key else None)


def _delta(label: str, spec: MetricSpec, result: float, reference: float, ci: list[float | None]) -> dict[str, Any]:
    delta = result - reference
    significant = ci[0] is not None and (ci[0] > 0 or ci[1] < 0)
    lower_is_better = not spec.higher_is_better
    verdict = ("no significant change" if not significant
               else "improved" if (delta < 0) == lower_is_better else "worsened")
    interval = "undefined" if ci[0] is None else f"{ci[0]:+.4f} to {ci[1]:+.4f}"
    amount = f" by {abs(delta):.4f}" if significant else ""
    return {"label": label, "result": result, "reference": reference, "delta": delta, "ci": ci,
            "significant": significant,
            "lower_is_better": lower_is_better, "verdict": verdict,
            "statement": f"{label}: {verdict}{amount} (delta {delta:+.4f}, {CONFIDENCE:.0%} CI {interval})"}


def _compare_probe(compared: Compared, n_resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Deltas of the compared values of one probe, keyed ``<prefix>.<value name with dots>``."""
    result, reference = compared.result, compared.reference
    mine, theirs = result.summary(result.tables), reference.summary(reference.tables)
    paired = paired_probe(result, reference)
    intervals = bootstrap_ci(paired.summary, paired.bootstrap_tables(), n_resamples, seed)
    return {f"{compared.prefix}.{name.replace('/', '.')}": _delta(label, spec, mine[name], theirs[name],
                                                                  intervals[name])
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
            head_fraction: float = DEFAULT_HEAD_FRACTION) -> dict[str, Any]:
    """Paired deltas (result - reference) with CIs, McNemar tests and the spectral summary."""
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
            comparison.update(_compare_probe(compared, n_resamples, seed))
        mcnemar.update({name: mcnemar_exact(*correct)
                        for name, correct in family.mcnemar(mine[family.name], theirs[family.name]).items()})
    spectrum = spectrum_of_results(result_dir, reference_dir, head_fraction)
    return {
        "result": _identity(result_meta, result_dir), "reference": _identity(reference_meta, reference_dir),
        "suite": suite.name, "resamples": n_resamples, "seed": seed,
        "convention": f"delta = result - reference; {CONFIDENCE:.0%} paired percentile bootstrap "
                      f"({n_resamples} resamples, seed {seed}); significant when the interval excludes 0",
        "deltas": comparison, "mcnemar": mcnemar,
        "spectrum": {name: value for name, value in spectrum.items() if name != "per_rank"},
    }


def _identity(result: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    return {"dir": str(directory), **{key: result[key] for key in ("model", "runtime", "precision",
                                                                    "executed_precision")}}
