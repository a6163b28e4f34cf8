"""Confidence intervals and paired tests: a seeded percentile bootstrap and an exact McNemar test.

Bootstrap: ``DEFAULT_RESAMPLES`` (1000) resamples with replacement, percentile 95% interval,
seeded through numpy's SeedSequence so the same inputs and seed always give the same interval.
Data come as *tables* (mappings of row-aligned arrays). Each table is resampled on its own
(rows drawn jointly across its columns), so one table gives an ordinary or paired bootstrap and
several tables a stratified one (e.g. ID vs OOD, or one table per group). A resample keeps the
table's row order (rows drawn k times appear k times in place), so a table pre-sorted by a score
stays sorted and the metric's own stable sort of it is cheap.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

DEFAULT_RESAMPLES = 1000
CONFIDENCE = 0.95

Table = Mapping[str, np.ndarray]
Summary = Callable[[Sequence[Table]], Mapping[str, float]]


def seeded_rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator determined by the run's seed and a purpose label (independent streams per purpose)."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def _resample(table: Table, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``length`` rows drawn uniformly with replacement, in the table's order."""
    rows = np.repeat(np.arange(length), np.bincount(rng.integers(0, length, length), minlength=length))
    return {name: column[rows] for name, column in table.items()}


def bootstrap_ci(summary: Summary, tables: Sequence[Table], n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, list[float | None]]:
    """Percentile bootstrap interval ``[low, high]`` for every value ``summary(tables)`` returns.

    A value undefined in some resamples (NaN) uses the others; None if it never is defined.
    """
    rng = seeded_rng(seed, "bootstrap")
    lengths = [len(next(iter(table.values()))) for table in tables]
    draws: list[Mapping[str, float]] = []
    for _ in range(n_resamples):
        draws.append(summary([_resample(table, length, rng) for table, length in zip(tables, lengths)]))
    tail = 50.0 * (1.0 - confidence)
    intervals: dict[str, list[float | None]] = {}
    for name in draws[0]:
        values = np.array([draw[name] for draw in draws], dtype=np.float64)
        values = values[np.isfinite(values)]
        intervals[name] = ([float(v) for v in np.percentile(values, [tail, 100.0 - tail])]
                           if len(values) else [None, None])
    return intervals


def with_ci(summary: Summary, tables: Sequence[Table], n_resamples: int = DEFAULT_RESAMPLES,
            seed: int = 0) -> dict[str, Any]:
    """``summary(tables)`` plus a ``ci`` entry holding each value's bootstrap interval."""
    return {**summary(tables), "ci": bootstrap_ci(summary, tables, n_resamples, seed)}


def mcnemar_exact(correct: np.ndarray, reference_correct: np.ndarray) -> dict[str, float | int]:
    """Exact McNemar test on paired correctness: two-sided binomial test on the discordant pairs."""
    correct = np.asarray(correct, dtype=bool)
    reference_correct = np.asarray(reference_correct, dtype=bool)
    only_result = int(np.sum(correct & ~reference_correct))
    only_reference = int(np.sum(~correct & reference_correct))
    discordant = only_result + only_reference
    p_value = float(binomtest(only_result, discordant, 0.5).pvalue) if discordant else 1.0
    return {"only_result_correct": only_result, "only_reference_correct": only_reference, "p_value": p_value}
