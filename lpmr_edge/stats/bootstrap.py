"""Seeded bootstrap over tables of per-sample rows: percentile and BCa intervals, BCa test p-values.

Data come as *tables* (mappings of row-aligned arrays). Each table is resampled on its own (rows
drawn jointly across its columns), so one table gives an ordinary or paired bootstrap and several
tables a stratified one (e.g. ID vs OOD, or one table per group). A resample keeps the table's row
order (rows drawn k times appear k times in place), so a table pre-sorted by a score stays sorted
and the metric's own stable sort of it is cheap. ``DEFAULT_RESAMPLES`` (1000) resamples, seeded
through numpy's SeedSequence so the same inputs and seed always give the same draws.

BCa (Efron 1987; DiCiccio & Efron 1996), the default interval:
  z0 = Phi^-1(share of draws below the estimate, ties counted half), clipped to [1/2B, 1-1/2B];
  a  = sum d^3 / (6 (sum d^2)^1.5), d = mean(theta_(g)) - theta_(g), from a *grouped* (delete-a-group)
       jackknife: the rows of each table are dealt, in a seeded random order, into
       G = min(``JACKKNIFE_GROUPS``, rows of the largest table) groups and theta_(g) is the summary
       without group g. With G = n this is the ordinary leave-one-out jackknife (scipy's), and the
       estimate of a stays consistent for G < n at the cost of G instead of n summaries;
  interval = draws' quantiles at Phi(z0 + (z0 + z)/(1 - a (z0 + z))) for z = Phi^-1(alpha/2), Phi^-1(1-alpha/2),
       widened to contain the estimate if the draws lie almost all on one side of it.
A non-finite jackknife value is skipped; a = 0 (bias-corrected percentile) if no skew is measurable.
"""
from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

DEFAULT_RESAMPLES = 1000
CONFIDENCE = 0.95
JACKKNIFE_GROUPS = 100
BCA = "bca"

Table = Mapping[str, np.ndarray]
Summary = Callable[[Sequence[Table]], Mapping[str, float]]


def seeded_rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator determined by the run's seed and a purpose label (independent streams per purpose)."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def table_length(table: Table) -> int:
    """Rows of a table (every column has as many)."""
    return len(next(iter(table.values())))


def _resample(table: Table, length: int, rng: np.random.Generator,
              order: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``length`` rows drawn uniformly with replacement, in the table's order (or in ``order``, a permutation
    of its rows: the same rows, each as often, emitted in that order)."""
    counts = np.bincount(rng.integers(0, length, length), minlength=length)
    rows = np.repeat(np.arange(length), counts) if order is None else np.repeat(order, counts[order])
    return {name: column[rows] for name, column in table.items()}


def bootstrap_draws(summary: Summary, tables: Sequence[Table], n_resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0, orders: Sequence[np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
    """Every value of ``summary`` on ``n_resamples`` seeded resamples of the tables (NaN where undefined).

    ``orders`` (one permutation of its rows or None per table) emits each resample's rows in that order: the
    same rows as without it, so a summary that does not depend on the order of rows gives the same values,
    and one that sorts by a column sorts faster when its order sorts that column.
    """
    rng = seeded_rng(seed, "bootstrap")
    lengths = [table_length(table) for table in tables]
    orders = list(orders) if orders is not None else [None] * len(tables)
    draws = [summary([_resample(table, length, rng, order) for table, length, order in zip(tables, lengths, orders)])
             for _ in range(n_resamples)]
    return {name: np.array([draw[name] for draw in draws], dtype=np.float64) for name in draws[0]}


def jackknife_values(summary: Summary, tables: Sequence[Table], n_groups: int = JACKKNIFE_GROUPS,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Every value of ``summary`` with each of the seeded row groups deleted (see the module docstring)."""
    rng = seeded_rng(seed, "jackknife")
    lengths = [table_length(table) for table in tables]
    groups = max(1, min(n_groups, max(lengths)))
    labels = [rng.permutation(length) % groups for length in lengths]
    values = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a deleted group can empty a small table
        for group in range(groups):
            values.append(summary([{name: column[label != group] for name, column in table.items()}
                                   for table, label in zip(tables, labels)]))
    return {name: np.array([value[name] for value in values], dtype=np.float64) for name in values[0]}


def acceleration(jackknife: np.ndarray) -> float:
    """BCa acceleration from jackknife values (non-finite ones skipped; 0 when undefined)."""
    values = jackknife[np.isfinite(jackknife)]
    deviations = values.mean() - values if len(values) else values
    spread = float(np.sum(deviations ** 2))
    return float(np.sum(deviations ** 3) / (6.0 * spread ** 1.5)) if spread > 0 else 0.0


def _bias_correction(estimate: float, draws: np.ndarray) -> float:
    share = (np.sum(draws < estimate) + 0.5 * np.sum(draws == estimate)) / len(draws)
    return float(ndtri(np.clip(share, 0.5 / len(draws), 1.0 - 0.5 / len(draws))))


def bca_interval(estimate: float, draws: np.ndarray, jackknife: np.ndarray,
                 confidence: float = CONFIDENCE) -> list[float | None]:
    """BCa interval ``[low, high]`` containing ``estimate``; ``[None, None]`` without finite draws."""
    draws = draws[np.isfinite(draws)]
    if not len(draws) or not np.isfinite(estimate):
        return [None, None]
    z0, accel = _bias_correction(estimate, draws), acceleration(jackknife)
    normal = z0 + ndtri(np.array([(1.0 - confidence) / 2, (1.0 + confidence) / 2]))
    levels = ndtr(z0 + normal / (1.0 - accel * normal))
    low, high = np.percentile(draws, 100.0 * levels)
    return [float(min(low, estimate)), float(max(high, estimate))]


def bca_p_greater(estimate: float, draws: np.ndarray, jackknife: np.ndarray, null: float) -> float:
    """One-sided p-value of H0: theta <= ``null`` that inverts the BCa interval.

    The one-sided BCa lower bound at level alpha exceeds ``null`` exactly when alpha > p:
    p = Phi(w / (1 + a w) - z0) with w = Phi^-1(G(null)) - z0, G the draws' CDF (ties counted half);
    1/2B (or 1 - 1/2B) when ``null`` lies beyond every draw. H0: theta >= null has p = 1 - this.
    """
    draws = draws[np.isfinite(draws)]
    if not len(draws) or not np.isfinite(estimate):
        return float("nan")
    z0, accel = _bias_correction(estimate, draws), acceleration(jackknife)
    share = (np.sum(draws < null) + 0.5 * np.sum(draws == null)) / len(draws)
    if share in (0.0, 1.0):  # null beyond every draw: p only known to be below about 1/B
        return 0.5 / len(draws) if share == 0.0 else 1.0 - 0.5 / len(draws)
    w = float(ndtri(share)) - z0
    if 1.0 + accel * w <= 0:
        return 0.0 if w > 0 else 1.0
    return float(ndtr(w / (1.0 + accel * w) - z0))


def bootstrap_ci(summary: Summary, tables: Sequence[Table], n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, list[float | None]]:
    """Percentile bootstrap interval ``[low, high]`` for every value ``summary(tables)`` returns.

    A value undefined in some resamples (NaN) uses the others; None if it never is defined.
    """
    tail = 50.0 * (1.0 - confidence)
    intervals: dict[str, list[float | None]] = {}
    for name, values in bootstrap_draws(summary, tables, n_resamples, seed).items():
        values = values[np.isfinite(values)]
        intervals[name] = ([float(v) for v in np.percentile(values, [tail, 100.0 - tail])]
                           if len(values) else [None, None])
    return intervals


def with_ci(summary: Summary, tables: Sequence[Table], n_resamples: int = DEFAULT_RESAMPLES,
            seed: int = 0) -> dict[str, Any]:
    """``summary(tables)`` plus a ``ci`` entry holding each value's percentile bootstrap interval."""
    return {**summary(tables), "ci": bootstrap_ci(summary, tables, n_resamples, seed)}


def bca_estimates(summary: Summary, tables: Sequence[Table], n_resamples: int = DEFAULT_RESAMPLES,
                  seed: int = 0, confidence: float = CONFIDENCE, jackknife_groups: int = JACKKNIFE_GROUPS,
                  orders: Sequence[np.ndarray | None] | None = None) -> dict[str, dict[str, Any]]:
    """Every value of ``summary(tables)`` with its BCa interval (``orders``: see ``bootstrap_draws``).

    Returns ``{name: {"value", "ci": [low, high] | [None, None], "method": "bca", "n", "strata"}}``:
    ``n`` the rows over all tables, ``strata`` the rows per table (resampled separately).
    """
    values = summary(tables)
    draws = bootstrap_draws(summary, tables, n_resamples, seed, orders)
    jackknife = jackknife_values(summary, tables, jackknife_groups, seed)
    strata = [table_length(table) for table in tables]
    return {name: {"value": float(value), "ci": bca_interval(float(value), draws[name], jackknife[name], confidence),
                   "method": BCA, "n": sum(strata), "strata": strata}
            for name, value in values.items()}
