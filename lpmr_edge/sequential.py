"""Evaluate until settled: anytime-valid paired comparisons of candidates on a seeded image order.

**Setting.** The images of an evaluation set are visited in a seeded random order (``shard_order``),
a shard at a time. If the set's images are i.i.d. draws from a population, the visited sequence is
i.i.d. too, so every quantity below is about the *population* mean (the same target as the picker's
paired bootstrap). A candidate that is settled stops being evaluated; ``EvaluationRecord`` says
exactly which images each candidate has seen, round-trips through JSON and hands out the next shard
(resume/extension). Each comparison is an anytime-valid PrPl-EB confidence sequence (CS) of the mean
paired loss difference (``lpmr_edge.stats.sequences.SequentialComparison``, which has the method).

**Several candidates.** ``SettlingDecision`` keeps one CS per pair of candidates at level
``a / (K (K - 1) / 2)`` (Bonferroni), so with probability ``>= confidence`` all of them cover at every
time, whatever pair the data make relevant. Upper bounds on "how much ``c`` can beat ``b``" are
chained through other candidates (min-plus closure, valid under simultaneous coverage). Each
candidate is related to the recommendation ``b`` (the one whose largest possible shortfall to any
other is smallest): *worse* (``b`` certainly beats it) or *equivalent* (the difference is certainly
within the margin) settle it and it stops being evaluated; the decision is *settled* when every candidate is. Then, with
probability ``>= confidence``, every label is right and ``b`` is within the margin of the truly best.
A stopped candidate comes back if the recommendation changes and its relation to the new one is
undecided; a pair's data are then the images both saw, a subsequence chosen from past data only,
which keeps the CS valid. With ``margin = 0`` identical candidates never settle.

**Losses.** The rule needs a decomposable per-sample loss with a known range ``[0, B]``: top-1 error
(``1 - correct``, B = 1), Brier score (B = 2), NLL clipped at ``B`` (``clipped_nll``; the mean of the
clipped NLL is then what is compared). ECE is not a mean of per-sample losses; decide calibration on the
Brier score (a proper scoring rule); other non-decomposable metrics can feed a ``SpentComparison``
(``lpmr_edge.stats.sequences``).

**AUROC as a per-pair loss.** AUROC (ID positive) is ``P(s_id > s_ood) + P(s_id = s_ood) / 2`` for an
independent ID and OOD draw. Both sets are visited in their own seeded orders; the k-th ID image of the
order is paired with the k-th OOD image (disjoint pairs), and ``pair_auroc_losses`` gives each pair the
loss ``1 - [s_id > s_ood] - [s_id = s_ood] / 2`` in ``[0, 1]``. The pairs are i.i.d. with mean loss
``1 - AUROC``, so the difference between two candidates on the same pairs is a bounded paired
difference and the PrPl-EB CS applies *exactly* (no asymptotics). The price: n pairs carry less
information than the U-statistic over all ``n_id x n_ood`` pairs (whose terms are dependent, which a
per-sample CS cannot take), so the CS is wider than the fixed-n AUROC interval.

**Strata: worst set, worst group, mean over sets.** An objective that combines several strata (OOD sets
for ``auroc:worst`` and ``auroc``; groups of a group-labelled set for worst-group accuracy, each group's
images the subsequence of the visiting order with that group label) gets one CS per pair *and* stratum at
level ``a / (pairs x strata)`` (Bonferroni over both). On the event that all cover, the difference of the
combined objective is bounded: for the mean of the strata's mean losses by the mean of the bounds. For
the worst (largest mean loss), ``max_s a_s - max_s b_s`` is at most ``a_s - b_s`` at ``a``'s worst
stratum and at least ``a_s - b_s`` at ``b``'s; which stratum is worst is unknown, so each candidate also
gets a CS of its own mean loss per stratum (K more CSs per stratum: level ``a / ((pairs + K) x strata)``),
and its *possible* worst strata are those whose upper bound reaches the largest lower bound (the true
worst always does, under coverage). The difference then lies in ``[min l_s over b's possible worst,
max u_s over a's possible worst]`` — tight when both have the same worst stratum — and also in the unpaired
``[max_s L_a,s - max_s U_b,s, max_s U_a,s - max_s L_b,s]`` (needed when the worst strata differ); the
intersection of the two is used. The rest of the rule (chaining, states, stopping) is unchanged, so its
guarantee carries over. Worst-group needs each candidate's worst group told apart from its others (and,
for equivalence, a narrow interval there): with many small groups it settles late or not at all,
which is the honest answer.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpmr_edge.errors import UserError
from lpmr_edge.stats import SequentialComparison, check_margin_and_confidence, classify

BRIER_BOUND = 2.0  # sum_k (p_k - y_k)^2 over a probability vector lies in [0, 2]
TOP1_BOUND = 1.0  # top-1 error 1 - correct lies in {0, 1}
ONE_STREAM = ""  # the stratum of an objective that is the mean loss of one sample stream
MEAN, WORST = "mean", "worst"  # how a decision combines its strata's mean losses
COMBINES = (MEAN, WORST)


def clipped_nll(probability_of_label: np.ndarray, bound: float) -> np.ndarray:
    """Per-sample NLL ``-log p`` clipped to ``[0, bound]`` (the range ``SequentialComparison`` needs)."""
    return np.minimum(-np.log(np.clip(probability_of_label, math.exp(-bound), 1.0)), bound)


def pair_auroc_losses(id_scores: np.ndarray, ood_scores: np.ndarray) -> np.ndarray:
    """Per-pair AUROC losses of disjoint pairs (the k-th ID score with the k-th OOD score; the longer array's
    excess is left unpaired): ``1 - [id > ood] - [id = ood] / 2``, whose mean over i.i.d. pairs is
    ``1 - AUROC`` with ID the positive class (higher score = more in-distribution)."""
    n = min(len(id_scores), len(ood_scores))
    id_part, ood_part = np.asarray(id_scores)[:n], np.asarray(ood_scores)[:n]
    return 1.0 - (id_part > ood_part) - 0.5 * (id_part == ood_part)


@dataclass(frozen=True)
class SettleSettings:
    """How to evaluate until settled: images per shard, wall-time ``deadline`` (``time.monotonic()``;
    None: no budget) checked after each shard, and the confidence of the decision."""

    shard_size: int = 200
    deadline: float | None = None
    confidence: float = 0.95


def shard_order(n_images: int, seed: int) -> np.ndarray:
    """The seeded order in which the ``n_images`` images of an evaluation set are visited."""
    if n_images < 0:
        raise UserError(f"n_images {n_images} is negative")
    return np.random.default_rng([seed, zlib.crc32(b"shard order")]).permutation(n_images)


@dataclass
class EvaluationRecord:
    """Which images of one evaluation set each candidate has seen, shard by shard (JSON-serialisable).

    ``shards`` lists, in order, ``{"indices": [...], "candidates": [...]}``: the image indices of the
    shard (a contiguous stretch of ``shard_order``) and the candidates evaluated on all of them.
    A shard is recorded only once every listed candidate has finished it.
    """

    n_images: int
    seed: int
    shards: list[dict[str, list]] = field(default_factory=list)

    @property
    def position(self) -> int:
        """How many images of the order have been handed out in recorded shards."""
        return sum(len(shard["indices"]) for shard in self.shards)

    def next_indices(self, shard_size: int) -> np.ndarray:
        """The image indices of the next shard (empty when the set is exhausted)."""
        if shard_size < 1:
            raise UserError(f"shard size {shard_size} must be >= 1")
        start = self.position
        return shard_order(self.n_images, self.seed)[start:start + shard_size]

    def add(self, indices: Sequence[int], candidates: Sequence[str]) -> None:
        """Record that ``candidates`` were evaluated on the next shard, ``indices``."""
        expected = self.next_indices(max(len(indices), 1))[:len(indices)]
        if not np.array_equal(np.asarray(indices), expected):
            raise UserError("shard indices are not the next images of the seeded order; take them from next_indices")
        self.shards.append({"indices": [int(i) for i in indices], "candidates": list(candidates)})

    def seen(self, candidate: str) -> list[int]:
        """The image indices ``candidate`` was evaluated on, in visiting order."""
        return [i for shard in self.shards if candidate in shard["candidates"] for i in shard["indices"]]

    def to_json(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "seed": self.seed, "shards": self.shards}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvaluationRecord:
        return cls(int(data["n_images"]), int(data["seed"]),
                   [{"indices": list(s["indices"]), "candidates": list(s["candidates"])} for s in data["shards"]])


def min_plus_closure(weights: np.ndarray) -> np.ndarray:
    """All-pairs shortest path lengths (Floyd-Warshall) of a dense weight matrix with a zero diagonal."""
    closed = np.array(weights, dtype=np.float64)
    for k in range(len(closed)):
        closed = np.minimum(closed, closed[:, k, None] + closed[None, k, :])
    return closed


class SettlingDecision:
    """Which of several candidates to recommend (lowest objective loss), decided sequentially.

    The objective is the mean loss of one sample stream, or combines several ``strata`` (OOD sets, groups),
    each a stream of per-sample losses with its own mean: ``combine`` = ``"mean"`` (their mean) or
    ``"worst"`` (their largest mean loss). One ``SequentialComparison`` per pair and stratum at the
    Bonferroni level (see module doc). After each ``update``: ``states`` relates every candidate to the
    recommendation, ``settled`` says none is undecided, and ``to_evaluate`` lists the candidates the next
    shard needs.
    """

    def __init__(self, candidates: Sequence[str], margin: float, confidence: float, bound: float,
                 horizon: int | None = None, strata: Sequence[str] = (ONE_STREAM,), combine: str = MEAN):
        if len(candidates) < 2 or len(set(candidates)) != len(candidates):
            raise UserError("a settling decision needs at least two distinct candidate names")
        if not strata or len(set(strata)) != len(strata) or combine not in COMBINES:
            raise UserError(f"strata must be distinct and at least one, combine one of {', '.join(COMBINES)}")
        check_margin_and_confidence(margin, confidence)
        self.candidates, self.strata, self.combine = list(candidates), list(strata), combine
        self.margin, self.confidence, self.bound, self.horizon = margin, confidence, bound, horizon
        pairs = len(candidates) * (len(candidates) - 1) // 2
        # the worst of several strata also needs each candidate's own mean loss per stratum (its worst stratum)
        own = len(candidates) if combine == WORST and len(self.strata) > 1 else 0
        self.pair_confidence = 1.0 - (1.0 - confidence) / ((pairs + own) * len(self.strata))

        def streams() -> dict[str, SequentialComparison]:
            return {stratum: SequentialComparison(margin, self.pair_confidence, bound, horizon)
                    for stratum in self.strata}

        self.comparisons = {(a, b): streams() for i, a in enumerate(self.candidates) for b in self.candidates[i + 1:]}
        self.own_losses = {name: streams() for name in self.candidates[:own and len(self.candidates)]}

    def update(self, losses: Mapping[str, np.ndarray], stratum: str = ONE_STREAM) -> None:
        """Add one shard of a stratum: per-sample losses (in visiting order, same samples) of each evaluated
        candidate."""
        unknown = set(losses) - set(self.candidates)
        if unknown:
            raise UserError(f"unknown candidates {sorted(unknown)}; known: {self.candidates}")
        if stratum not in self.strata:
            raise UserError(f"unknown stratum '{stratum}'; known: {self.strata}")
        if len({np.shape(v) for v in losses.values()}) > 1:
            raise UserError("every candidate of a shard needs a loss for each of the shard's images")
        for (a, b), by_stratum in self.comparisons.items():
            if a in losses and b in losses:
                by_stratum[stratum].update(np.asarray(losses[a], dtype=np.float64)
                                           - np.asarray(losses[b], dtype=np.float64))
        for name in set(losses) & set(self.own_losses):
            self.own_losses[name][stratum].update(np.asarray(losses[name], dtype=np.float64))

    def possible_worst(self, name: str) -> list[str]:
        """The strata that can be ``name``'s worst (largest mean loss): those whose upper bound reaches the
        largest lower bound of any stratum (all strata when there is one, or with ``combine`` mean)."""
        if name not in self.own_losses:
            return self.strata
        floor = max(c.low for c in self.own_losses[name].values())
        return [stratum for stratum, c in self.own_losses[name].items() if c.high >= floor]

    def interval(self, a: str, b: str) -> tuple[float, float]:
        """Simultaneous bounds on ``objective(a) - objective(b)`` (``a`` listed before ``b``) from the strata's
        intervals ``[l_s, u_s]`` of ``mean_s(a) - mean_s(b)``: mean -> ``[mean l_s, mean u_s]``; worst ->
        ``[min l_s over b's possible worst strata, max u_s over a's]`` (``max_s a_s - max_s b_s`` is at most
        ``a_s - b_s`` at ``a``'s worst stratum and at least ``a_s - b_s`` at ``b``'s), intersected with the
        unpaired bounds from each candidate's own worst-stratum bounds."""
        by_stratum = self.comparisons[(a, b)]
        if self.combine == WORST and self.own_losses:
            worst = {name: (max(c.low for c in self.own_losses[name].values()),
                            max(c.high for c in self.own_losses[name].values())) for name in (a, b)}
            return (max(min(by_stratum[s].low for s in self.possible_worst(b)), worst[a][0] - worst[b][1]),
                    min(max(by_stratum[s].high for s in self.possible_worst(a)), worst[a][1] - worst[b][0]))
        if self.combine == WORST:
            return min(c.low for c in by_stratum.values()), max(c.high for c in by_stratum.values())
        lows, highs = zip(*(c.interval for c in by_stratum.values()))
        return float(np.mean(lows)), float(np.mean(highs))

    def paired_samples(self, a: str, b: str) -> dict[str, int]:
        """How many samples of each stratum the pair was compared on."""
        return {stratum: c.count for stratum, c in self.comparisons[(a, b)].items()}

    def can_beat(self) -> np.ndarray:
        """``[c, b]``: upper bound on ``loss(b) - loss(c)``, how much ``c`` can beat ``b`` (chained)."""
        index = {name: i for i, name in enumerate(self.candidates)}
        direct = np.zeros((len(self.candidates),) * 2)
        for a, b in self.comparisons:
            low, high = self.interval(a, b)  # loss(a) - loss(b) in [low, high]
            direct[index[b], index[a]] = high
            direct[index[a], index[b]] = -low
        return min_plus_closure(direct)

    def relations(self) -> dict[str, tuple[str, float, float]]:
        """Each candidate against the recommendation ``b``, the candidate whose largest possible
        shortfall to any other is smallest (ties: the first listed): its state and the chained interval
        of ``loss(c) - loss(b)``. States: ``recommended``; ``equivalent`` (certainly inside
        ``(-margin, margin)``); ``worse`` (``b`` certainly beats it); or ``undecided``."""
        beat = self.can_beat()
        off_diagonal = np.where(np.eye(len(beat), dtype=bool), -np.inf, beat)
        best = int(np.argmin(off_diagonal.max(axis=0)))
        result = {}
        for c, name in enumerate(self.candidates):
            low, high = float(-beat[c, best]), float(beat[best, c])
            state = "recommended" if c == best else classify(low, high, self.margin)
            # certainly better than b: b is about to be replaced, so nothing is settled yet
            result[name] = ("undecided" if state == "better" else state, low, high)
        return result

    def states(self) -> dict[str, str]:
        """The state of each candidate (see ``relations``)."""
        return {name: state for name, (state, _, _) in self.relations().items()}

    def describe(self) -> dict[str, Any]:
        """JSON summary for results and reports: the rule, the recommendation, and per candidate its
        state, interval against the recommendation and the most samples it was compared on (per stratum
        with several strata)."""
        samples = {name: {stratum: max([0] + [self.paired_samples(*pair)[stratum] for pair in self.comparisons
                                              if name in pair]) for stratum in self.strata}
                   for name in self.candidates}
        relations = self.relations()
        rule = "PrPl-EB confidence sequences (Waudby-Smith & Ramdas 2023), Bonferroni over pairs"
        described = {"rule": rule if len(self.strata) == 1 else f"{rule} and {len(self.strata)} strata "
                                                                f"({self.combine} of their mean losses)",
                     "confidence": self.confidence, "margin": self.margin, "settled": self.settled,
                     "recommended": self.recommended,
                     "candidates": {name: {"state": state, "difference": [low, high],
                                           "paired_images": sum(samples[name].values())}
                                    for name, (state, low, high) in relations.items()}}
        if len(self.strata) > 1:
            for name, node in described["candidates"].items():
                node["paired_samples"] = samples[name]
        return described

    @property
    def recommended(self) -> str:
        return next(name for name, state in self.states().items() if state == "recommended")

    @property
    def settled(self) -> bool:
        """Every other candidate is worse than or equivalent to the recommendation."""
        return "undecided" not in self.states().values()

    @property
    def to_evaluate(self) -> list[str]:
        """Candidates to evaluate on the next shard: the undecided ones and the recommendation (their
        comparisons are paired), none once settled. A candidate stopped as worse or equivalent comes
        back if the recommendation changes and its relation to the new one is undecided."""
        states = self.states()
        if "undecided" not in states.values():
            return []
        return [name for name, state in states.items() if state in ("undecided", "recommended")]

    def to_json(self) -> dict[str, Any]:
        """The whole decision state, to continue it in a later run (see ``from_json``)."""
        return {"candidates": self.candidates, "margin": self.margin, "confidence": self.confidence,
                "bound": self.bound, "horizon": self.horizon, "strata": self.strata, "combine": self.combine,
                "comparisons": [[a, b, stratum, comparison.to_json()] for (a, b), by_stratum in self.comparisons.items()
                                for stratum, comparison in by_stratum.items()],
                "own_losses": [[name, stratum, comparison.to_json()] for name, by_stratum in self.own_losses.items()
                               for stratum, comparison in by_stratum.items()]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SettlingDecision:
        decision = cls(data["candidates"], data["margin"], data["confidence"], data["bound"], data["horizon"],
                       data["strata"], data["combine"])
        for a, b, stratum, comparison in data["comparisons"]:
            decision.comparisons[(a, b)][stratum] = SequentialComparison.from_json(comparison)
        for name, stratum, comparison in data["own_losses"]:
            decision.own_losses[name][stratum] = SequentialComparison.from_json(comparison)
        return decision


def replay(decision: SettlingDecision, record: EvaluationRecord, losses: Mapping[str, np.ndarray]) -> None:
    """Feed ``decision`` the recorded shards again from per-image losses (``losses[c][i]``: candidate
    ``c`` on image ``i``), e.g. to resume from saved per-sample outputs instead of a saved state."""
    for shard in record.shards:
        decision.update({name: np.asarray(losses[name])[shard["indices"]] for name in shard["candidates"]})
