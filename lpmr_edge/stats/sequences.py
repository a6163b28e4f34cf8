"""Anytime-valid confidence sequences for the mean of a bounded paired loss difference, as running
intervals classified against an equivalence margin (``lpmr_edge.sequential`` decides on them).

**Method: predictable plug-in empirical-Bernstein confidence sequence (PrPl-EB)**, Waudby-Smith &
Ramdas (2023), "Estimating means of bounded random variables by betting", JRSS-B 86(1), Theorem 2.
For ``x_1, x_2, ...`` in [0, 1] with conditional mean ``m``, truncation ``c = 1/2`` and level ``a``::

    mu_t     = (1/2 + sum_{i<=t} x_i) / (t + 1)                    (mu_0 = 1/2)
    sigma2_t = (1/4 + sum_{i<=t} (x_i - mu_i)^2) / (t + 1)         (sigma2_0 = 1/4)
    lambda_t = min(sqrt(2 log(2/a) / (sigma2_{t-1} t log(1 + t))), c)    (predictable)
    v_t      = 4 (x_t - mu_{t-1})^2,   psi(l) = (-log(1 - l) - l) / 4
    C_t      = sum lambda_i x_i / sum lambda_i  +-  (log(2/a) + sum v_i psi(lambda_i)) / sum lambda_i

and ``P(m in C_t for all t >= 1) >= 1 - a``; so is the running intersection of the ``C_t``, which is
what ``SequentialComparison`` keeps (taken at every sample, so it does not depend on where the looks
fall; it can only be empty on the event of probability ``<= a`` where the CS fails). The authors'
``confseq`` package builds the same CS as two one-sided ones at ``a/2`` (centring ``v_i`` on the
plain running mean; any predictable centring is valid). A paired per-sample loss difference ``d``
in ``[-B, B]`` is mapped to ``x = (d + B) / 2B``. Any predictable bets keep the guarantee, so
``horizon=N`` may replace ``t log(1 + t)`` by ``N`` in ``lambda_t`` (the paper's choice for a sample size
N, e.g. the set's size): tighter near ``N``, looser early, still valid at every ``t`` and on extension.

**Why confidence sequences, not alpha spending.** A CS holds at every sample size at once: it needs
no planned number of looks or shard size, and a resumed or extended run keeps its error rate, while
a Lan-DeMets spending rule is tied to a planned maximum information. The price is width: about
``sqrt(log(2/a) * log t)`` instead of ``z_{a/2}``, i.e. more images than a fixed-n test needs.

**Non-decomposable metrics.** ``SpentComparison`` takes, at look ``k``, a caller's paired (bootstrap)
interval at level ``1 - look_alpha(k, a)``; the looks' error rates sum to ``a`` (only as valid as the
bootstrap, i.e. asymptotically).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np

from lpmr_edge.errors import UserError

State = Literal["better", "worse", "equivalent", "undecided"]
BET_TRUNCATION = 0.5  # c in Waudby-Smith & Ramdas (2023), who suggest 1/2 or 3/4


def classify(low: float, high: float, margin: float) -> State:
    """The state of a loss difference (candidate - reference) known to lie in ``[low, high]``.

    ``equivalent`` (inside ``(-margin, margin)``) takes precedence over ``better`` (``high < 0``) and
    ``worse`` (``low > 0``): a difference smaller than the margin is practically none.
    """
    if -margin < low and high < margin:
        return "equivalent"
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "undecided"


def check_margin_and_confidence(margin: float, confidence: float) -> None:
    """UserError unless ``margin >= 0`` and ``0 < confidence < 1``."""
    if not margin >= 0:
        raise UserError(f"margin {margin} is negative; give a margin >= 0 in the metric's units")
    if not 0 < confidence < 1:
        raise UserError(f"confidence {confidence} is not in (0, 1); give e.g. 0.95")


def _shifted_cumsum(start: float, terms: np.ndarray) -> np.ndarray:
    """``start + cumsum(terms)`` added left to right, so chunked and one-go updates agree exactly."""
    return np.cumsum(np.concatenate(([start], terms)))[1:]


class _RunningInterval:
    """A running-intersection interval ``[low, high]`` of a loss difference, classified against ``margin``."""

    margin: float
    low: float
    high: float

    @property
    def interval(self) -> tuple[float, float]:
        """The interval so far (before any data: ``[-bound, bound]``, or unbounded for ``SpentComparison``)."""
        return self.low, self.high

    @property
    def state(self) -> State:
        return classify(self.low, self.high, self.margin)

    def to_json(self) -> dict[str, Any]:
        """Everything needed to continue (floats round-trip exactly through JSON)."""
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(**data)


@dataclass
class SequentialComparison(_RunningInterval):
    """Anytime-valid PrPl-EB confidence sequence for the mean paired loss difference (see module doc).

    ``update`` takes per-sample differences ``loss(candidate) - loss(reference)`` in ``[-bound, bound]``
    in visiting order; ``interval`` is the running intersection, ``state`` its ``classify``-cation.
    Feeding the same sequence in any chunking gives the identical state.
    """

    margin: float
    confidence: float
    bound: float
    horizon: int | None = None
    count: int = 0
    sum_x: float = 0.0
    sum_squared_deviation: float = 0.0
    sum_bet: float = 0.0
    sum_bet_x: float = 0.0
    sum_penalty: float = 0.0
    low: float = field(default=-math.inf)
    high: float = field(default=math.inf)

    def __post_init__(self) -> None:
        check_margin_and_confidence(self.margin, self.confidence)
        if not self.bound > 0:
            raise UserError(f"bound {self.bound} must be > 0: the largest per-sample loss")
        self.low = max(self.low, -self.bound)
        self.high = min(self.high, self.bound)

    @property
    def log_term(self) -> float:
        """``log(2 / a)`` with ``a = 1 - confidence``."""
        return math.log(2.0 / (1.0 - self.confidence))

    def update(self, diffs: np.ndarray) -> None:
        """Add the next paired differences (in visiting order) and tighten the interval."""
        d = np.asarray(diffs, dtype=np.float64).ravel()
        if d.size == 0:
            return
        if not np.all(np.abs(d) <= self.bound):
            raise UserError(f"paired differences outside [-{self.bound}, {self.bound}]; clip the loss or raise bound")
        x = (d + self.bound) / (2.0 * self.bound)
        t = self.count + np.arange(1, d.size + 1, dtype=np.float64)
        sum_x = _shifted_cumsum(self.sum_x, x)
        mean = (0.5 + sum_x) / (t + 1.0)
        previous_mean = np.concatenate((((0.5 + self.sum_x) / (self.count + 1.0),), mean[:-1]))
        sum_squared_deviation = _shifted_cumsum(self.sum_squared_deviation, (x - mean) ** 2)
        variance = (0.25 + sum_squared_deviation) / (t + 1.0)
        previous_variance = np.concatenate((((0.25 + self.sum_squared_deviation) / (self.count + 1.0),),
                                            variance[:-1]))
        growth = t * np.log1p(t) if self.horizon is None else float(self.horizon)
        bet = np.minimum(np.sqrt(2.0 * self.log_term / (previous_variance * growth)), BET_TRUNCATION)
        v = 4.0 * (x - previous_mean) ** 2
        psi = (-np.log1p(-bet) - bet) / 4.0
        penalty = v * psi
        sum_bet = _shifted_cumsum(self.sum_bet, bet)
        sum_bet_x = _shifted_cumsum(self.sum_bet_x, bet * x)
        sum_penalty = _shifted_cumsum(self.sum_penalty, penalty)
        centre = sum_bet_x / sum_bet
        half_width = (self.log_term + sum_penalty) / sum_bet
        scale = 2.0 * self.bound
        self.low = max(self.low, float(np.max(scale * (centre - half_width) - self.bound)))
        self.high = min(self.high, float(np.min(scale * (centre + half_width) - self.bound)))
        self.count += d.size
        self.sum_x, self.sum_squared_deviation = float(sum_x[-1]), float(sum_squared_deviation[-1])
        self.sum_bet, self.sum_bet_x, self.sum_penalty = float(sum_bet[-1]), float(sum_bet_x[-1]), float(sum_penalty[-1])


def look_alpha(look: int, alpha: float) -> float:
    """Error rate spent at look ``look`` (1-based): ``alpha * 6 / (pi^2 look^2)``; the sum over all looks is alpha."""
    if look < 1:
        raise UserError(f"look {look} must be >= 1")
    return alpha * 6.0 / (math.pi ** 2 * look ** 2)


@dataclass
class SpentComparison(_RunningInterval):
    """A comparison for a non-decomposable metric (ECE, AUROC): the caller supplies, at each look,
    a paired interval of ``metric(candidate) - metric(reference)`` (oriented as a loss) computed at level
    ``1 - look_alpha(look, 1 - confidence)``; the running intersection is classified like a CS.
    """

    margin: float
    confidence: float
    looks: int = 0
    low: float = -math.inf
    high: float = math.inf

    def __post_init__(self) -> None:
        check_margin_and_confidence(self.margin, self.confidence)

    @property
    def next_level(self) -> float:
        """The confidence level the caller's interval for the next look must have."""
        return 1.0 - look_alpha(self.looks + 1, 1.0 - self.confidence)

    def add_look(self, low: float, high: float) -> None:
        """Record the interval of the next look (computed at ``next_level``)."""
        self.looks += 1
        self.low, self.high = max(self.low, low), min(self.high, high)

