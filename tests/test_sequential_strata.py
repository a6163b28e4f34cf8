"""Evaluate until settled beyond per-image means: AUROC as a per-pair loss, objectives that combine strata
(worst OOD set, worst group, mean over sets). Seeded simulations count coverage misses and wrong settled
decisions against the stated error rate (plus three Monte Carlo standard errors); no timings.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from lpmr_edge.errors import UserError
from lpmr_edge.sequential import MEAN, WORST, SettlingDecision, pair_auroc_losses


def _tolerance(alpha: float, replications: int) -> float:
    return 3.0 * math.sqrt(alpha * (1.0 - alpha) / replications)


def test_pair_losses_over_all_pairs_average_to_one_minus_sklearn_auroc():
    rng = np.random.default_rng(0)
    id_scores, ood_scores = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 30).astype(float)  # ties
    every_id, every_ood = np.meshgrid(id_scores, ood_scores, indexing="ij")
    losses = pair_auroc_losses(every_id.ravel(), every_ood.ravel())
    labels = np.r_[np.ones(40), np.zeros(30)]  # ID is the positive class
    assert losses.mean() == pytest.approx(1 - roc_auc_score(labels, np.r_[id_scores, ood_scores]))
    assert set(np.unique(losses)) <= {0.0, 0.5, 1.0}
    assert len(pair_auroc_losses(id_scores, ood_scores)) == 30  # disjoint pairs: the shorter set's size


def _scores(rng: np.random.Generator, shifts: list[float], n: int, rho: float) -> np.ndarray:
    """Scores (K, n) of K candidates on the same n images: N(shift_k, 1) marginals, correlation ``rho``
    between candidates (as quantized and float models of one network)."""
    shared = rng.normal(size=n)
    own = rng.normal(size=(len(shifts), n))
    return np.asarray(shifts)[:, None] + rho * shared + math.sqrt(1 - rho ** 2) * own


def _auroc(shift: float) -> float:
    return float(norm.cdf(shift / math.sqrt(2)))  # ID ~ N(shift, 1) against OOD ~ N(0, 1)


def _pair_losses(rng: np.random.Generator, id_shifts: list[float], n: int) -> np.ndarray:
    """Per-pair AUROC losses (K, n) of K candidates on n disjoint (ID, OOD) pairs."""
    id_scores = _scores(rng, id_shifts, n, rho=0.98)
    ood_scores = _scores(rng, [0.0] * len(id_shifts), n, rho=0.98)
    return np.stack([pair_auroc_losses(i, o) for i, o in zip(id_scores, ood_scores)])


def _settle(decision: SettlingDecision, losses: np.ndarray, strata: np.ndarray, shard: int) -> int:
    """The settling loop: sample i (losses[:, i]) belongs to stratum ``strata[i]``; returns samples visited."""
    names, position = decision.candidates, 0
    while position < losses.shape[1] and not decision.settled:
        window = slice(position, position + shard)
        evaluated = decision.to_evaluate
        for stratum in decision.strata:
            chosen = strata[window] == stratum
            decision.update({name: losses[names.index(name), window][chosen] for name in evaluated}, stratum)
        position += shard
    return position


def test_auroc_pair_confidence_sequence_covers_the_true_difference_at_every_look():
    confidence, replications, n = 0.9, 300, 4000
    shifts = [1.0, 1.15]
    truth = _auroc(shifts[1]) - _auroc(shifts[0])  # loss(a) - loss(b) = AUROC(b) - AUROC(a)
    misses = 0
    for seed in range(replications):
        losses = _pair_losses(np.random.default_rng(seed), shifts, n)
        decision = SettlingDecision(["a", "b"], 0.0, confidence, bound=1.0)
        for start in range(0, n, 200):  # every look: the running intersection keeps any exclusion
            decision.update({"a": losses[0, start:start + 200], "b": losses[1, start:start + 200]})
        low, high = decision.interval("a", "b")
        misses += not low <= truth <= high
    assert misses / replications <= (1 - confidence) + _tolerance(1 - confidence, replications)


@pytest.mark.parametrize("combine", [WORST, MEAN])
def test_settling_on_two_ood_sets_picks_a_best_or_equivalent_candidate_at_the_stated_confidence(combine):
    # two OOD sets; per candidate ID-score shifts against each set: c1 is clearly worse on the near set,
    # c2 is within the margin of c0 on both
    confidence, margin, replications, n = 0.9, 0.03, 150, 6000
    near, far = [0.8, 0.5, 0.81], [2.5, 2.5, 2.49]
    right = visited = 0
    per_candidate = np.array([[1 - _auroc(near[k]), 1 - _auroc(far[k])] for k in range(3)])
    truth = per_candidate.max(axis=1) if combine == WORST else per_candidate.mean(axis=1)
    within = {f"c{k}" for k in range(3) if truth[k] - truth.min() < margin}
    assert within == {"c0", "c2"}
    for seed in range(replications):
        rng = np.random.default_rng(1000 + seed)
        by_set = [_pair_losses(rng, near, n), _pair_losses(rng, far, n)]
        losses = np.stack(by_set, axis=2).reshape(3, 2 * n)  # the two sets' pairs, shard by shard
        strata = np.tile(np.array(["near", "far"]), n)
        decision = SettlingDecision(["c0", "c1", "c2"], margin, confidence, 1.0, strata=["near", "far"],
                                    combine=combine)
        visited += _settle(decision, losses, strata, shard=400)
        right += decision.settled and decision.recommended in within
    assert right / replications >= confidence - _tolerance(1 - confidence, replications)
    assert visited / replications < 2 * n  # settled before the pairs ran out, on average


def _group_losses(rng: np.random.Generator, accuracies: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Top-1 losses (K, n): candidate k is right on an image of group g with probability accuracies[k, g];
    outcomes of candidates share a per-image difficulty (paired)."""
    difficulty = rng.random(len(groups))
    p = accuracies[:, groups]
    follows = rng.random(p.shape) < 0.9
    return 1.0 - np.where(follows, difficulty < p, rng.random(p.shape) < p).astype(np.float64)


def test_worst_group_settling_covers_the_worst_group_difference_and_picks_right():
    confidence, margin, replications, n = 0.9, 0.02, 100, 60000
    # rows: candidates; columns: 3 groups. Worst-group accuracies: c0 0.70 (group 2), c1 0.55 (group 0:
    # 15 points worse, in a *different* group, which only the unpaired bounds can tell), c2 0.705 (group 2,
    # like c0: within the margin)
    accuracies = np.array([[0.90, 0.80, 0.70], [0.55, 0.85, 0.75], [0.88, 0.82, 0.705]])
    worst_loss = 1 - accuracies.min(axis=1)
    misses = right = 0
    for seed in range(replications):
        rng = np.random.default_rng(5000 + seed)
        groups = rng.integers(0, 3, n)
        losses = _group_losses(rng, accuracies, groups)
        decision = SettlingDecision(["c0", "c1", "c2"], margin, confidence, 1.0, strata=["0", "1", "2"],
                                    combine=WORST)
        _settle(decision, losses, groups.astype(str), shard=1500)
        right += decision.settled and decision.recommended in ("c0", "c2")
        misses += any(not low <= worst_loss[i] - worst_loss[j] <= high
                      for i, j in ((0, 1), (0, 2), (1, 2))
                      for low, high in [decision.interval(f"c{i}", f"c{j}")])
    assert right / replications >= confidence - _tolerance(1 - confidence, replications)
    assert misses / replications <= (1 - confidence) + _tolerance(1 - confidence, replications)


def test_strata_share_the_error_rate_and_round_trip():
    decision = SettlingDecision(["a", "b", "c"], 0.01, 0.95, 1.0, strata=["x", "y"], combine=WORST)
    # 3 pairs + 3 own-loss streams (worst of 2 strata), each per stratum
    assert all(c.confidence == pytest.approx(1 - 0.05 / 12) for by in decision.comparisons.values() for c in by.values())
    rng = np.random.default_rng(3)
    decision.update({"a": rng.random(50), "b": rng.random(50)}, "x")
    decision.update({"a": rng.random(20), "b": rng.random(20), "c": rng.random(20)}, "y")
    copy = SettlingDecision.from_json(json.loads(json.dumps(decision.to_json())))
    assert copy.to_json() == decision.to_json() and copy.states() == decision.states()
    described = decision.describe()
    assert described["candidates"]["a"]["paired_samples"] == {"x": 50, "y": 20}
    assert "2 strata (worst" in described["rule"]
    with pytest.raises(UserError, match="stratum"):
        decision.update({"a": np.zeros(2), "b": np.zeros(2)}, "z")
    with pytest.raises(UserError, match="combine"):
        SettlingDecision(["a", "b"], 0.01, 0.95, 1.0, combine="median")


def test_false_settles_when_the_worst_strata_differ_by_exactly_the_margin_stay_within_the_error_rate():
    # c0's worst group is 0 (accuracy 0.70), c1's is group 1 (0.65): c1 is worse by exactly the margin, in
    # another group, so only the unpaired bounds decide; "worse" is right, calling them equivalent (or
    # recommending c1 as settled) is an error of the rule
    confidence, margin, replications, n = 0.8, 0.05, 200, 20000
    accuracies = np.array([[0.70, 0.90], [0.80, 0.65]])
    errors = settled = 0
    for seed in range(replications):
        rng = np.random.default_rng(20_000 + seed)
        groups = rng.integers(0, 2, n)
        decision = SettlingDecision(["c0", "c1"], margin, confidence, 1.0, strata=["0", "1"], combine=WORST)
        _settle(decision, _group_losses(rng, accuracies, groups), groups.astype(str), shard=1000)
        settled += decision.settled
        errors += decision.settled and (decision.recommended == "c1" or "equivalent" in decision.states().values())
    assert errors / replications <= (1 - confidence) + _tolerance(1 - confidence, replications)
    assert settled - errors > replications / 2  # and it does tell that c1 is worse (true: by the margin)
