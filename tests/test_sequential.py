"""Evaluate until settled: confidence-sequence coverage, the settling rule's error rates, exact
stopping looks, resume, and the helpers pinned to scipy.

Simulations are seeded; a rate is accepted up to the stated error rate plus three Monte Carlo
standard errors, ``3 * sqrt(a (1 - a) / replications)``.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.sparse.csgraph import floyd_warshall
from scipy.stats import binomtest, norm

from lpmr_edge.errors import UserError
from lpmr_edge.sequential import (
    ONE_STREAM,
    EvaluationRecord,
    SettlingDecision,
    clipped_nll,
    min_plus_closure,
    replay,
    shard_order,
)
from lpmr_edge.stats import BET_TRUNCATION, SequentialComparison, SpentComparison, classify, look_alpha


def _tolerance(alpha: float, replications: int) -> float:
    return 3.0 * math.sqrt(alpha * (1.0 - alpha) / replications)


def _correctness_losses(rng: np.random.Generator, accuracies: list[float], n: int, shared: float) -> np.ndarray:
    """Top-1 losses (K, n) with exact marginal accuracies; a fraction ``shared`` of each candidate's
    outcomes follows a per-image difficulty common to all candidates (paired, positively correlated)."""
    p = np.asarray(accuracies)[:, None]
    difficulty = rng.random(n)
    own = rng.random((len(accuracies), n))
    follows_difficulty = rng.random((len(accuracies), n)) < shared
    return 1.0 - np.where(follows_difficulty, difficulty < p, own < p).astype(np.float64)


def _settle(losses: np.ndarray, margin: float, confidence: float, shard: int) -> tuple[SettlingDecision, int]:
    """Run the settling loop over shards; returns the decision and the images visited."""
    names = [f"c{i}" for i in range(len(losses))]
    decision = SettlingDecision(names, margin, confidence, bound=1.0)
    position = 0
    while position < losses.shape[1] and not decision.settled:
        decision.update({name: losses[names.index(name), position:position + shard]
                         for name in decision.to_evaluate})
        position += shard
    return decision, position


def _reference_intervals(diffs: np.ndarray, confidence: float, bound: float, horizon: int | None = None) -> np.ndarray:
    """C_t of Waudby-Smith & Ramdas (2023), Theorem 2, one sample at a time (rows: t, [low, high])."""
    log_term = math.log(2.0 / (1.0 - confidence))
    mean_before, variance_before = 0.5, 0.25
    sum_x = sum_dev = sum_bet = sum_bet_x = sum_penalty = 0.0
    rows = []
    for t, d in enumerate(diffs, start=1):
        x = (d + bound) / (2 * bound)
        growth = t * math.log(1 + t) if horizon is None else horizon
        bet = min(math.sqrt(2 * log_term / (variance_before * growth)), BET_TRUNCATION)
        sum_penalty += 4 * (x - mean_before) ** 2 * (-math.log(1 - bet) - bet) / 4
        sum_bet += bet
        sum_bet_x += bet * x
        sum_x += x
        mean_before = (0.5 + sum_x) / (t + 1)
        sum_dev += (x - mean_before) ** 2
        variance_before = (0.25 + sum_dev) / (t + 1)
        centre, half = sum_bet_x / sum_bet, (log_term + sum_penalty) / sum_bet
        rows.append((2 * bound * (centre - half) - bound, 2 * bound * (centre + half) - bound))
    return np.array(rows)


@pytest.mark.parametrize("horizon", [None, 600])
def test_matches_a_one_sample_at_a_time_reference_at_every_look(horizon):
    rng = np.random.default_rng(3)
    diffs = rng.choice([-1.0, 0.0, 1.0], p=[0.06, 0.84, 0.10], size=900)
    reference = _reference_intervals(diffs, 0.9, 1.0, horizon)
    running_low, running_high = np.maximum.accumulate(reference[:, 0]), np.minimum.accumulate(reference[:, 1])
    comparison = SequentialComparison(margin=0.02, confidence=0.9, bound=1.0, horizon=horizon)
    cuts = np.sort(rng.choice(np.arange(1, 900), size=12, replace=False)).tolist() + [900]
    start = 0
    for end in cuts:
        comparison.update(diffs[start:end])
        start = end
        low, high = comparison.interval
        assert low == pytest.approx(max(-1.0, running_low[end - 1]), abs=1e-12)
        assert high == pytest.approx(min(1.0, running_high[end - 1]), abs=1e-12)
        assert comparison.state == classify(running_low[end - 1], running_high[end - 1], 0.02)


def test_identical_candidates_stay_undecided_until_exactly_the_look_the_bound_allows():
    margin, confidence = 0.05, 0.95
    reference = _reference_intervals(np.zeros(1000), confidence, 1.0)
    first_allowed = int(np.argmax((reference[:, 0] > -margin) & (reference[:, 1] < margin))) + 1
    # half-width >= 2 B log(2/a) / sum(lambda) >= 2 B log(2/a) / (c t): no rule of this form can say sooner
    assert first_allowed >= 2 * math.log(2 / (1 - confidence)) / (BET_TRUNCATION * margin)
    comparison = SequentialComparison(margin, confidence, bound=1.0)
    states = []
    for _ in range(first_allowed + 5):
        comparison.update(np.zeros(1))
        states.append(comparison.state)
    assert states[:first_allowed - 1] == ["undecided"] * (first_allowed - 1)
    assert states[first_allowed - 1:] == ["equivalent"] * 6


def _top1_differences(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice([-1.0, 0.0, 1.0], p=[0.07, 0.83, 0.10], size=n)  # mean 0.03


def _brier_like_differences(rng: np.random.Generator, n: int) -> np.ndarray:
    return 2.0 * (rng.beta(2.0, 5.0, n) - rng.beta(2.2, 5.0, n))  # in [-2, 2], mean 2 (2/7 - 2.2/7.2)


@pytest.mark.parametrize("draw, bound, true_mean, horizon", [
    (_top1_differences, 1.0, 0.03, None),
    (_top1_differences, 1.0, 0.03, 1000),  # tuned for n = 1000, still covers at every n up to 3000
    (_brier_like_differences, 2.0, 2 * (2 / 7 - 2.2 / 7.2), None)])
def test_confidence_sequence_covers_at_every_look_where_repeated_fixed_n_intervals_do_not(draw, bound, true_mean,
                                                                                         horizon):
    confidence, replications, n, look_every = 0.9, 300, 3000, 100
    alpha = 1 - confidence
    cs_misses = naive_misses = 0
    z = norm.ppf(1 - alpha / 2)
    for seed in range(replications):
        diffs = draw(np.random.default_rng(seed), n)
        comparison = SequentialComparison(0.01, confidence, bound, horizon)
        comparison.update(diffs)  # the running intersection: excluded at the end iff excluded at some t
        low, high = comparison.interval
        cs_misses += not low <= true_mean <= high
        looks = np.arange(look_every, n + 1, look_every)
        means = np.cumsum(diffs)[looks - 1] / looks
        sds = np.array([diffs[:k].std(ddof=1) for k in looks])
        naive_misses += bool(np.any(np.abs(means - true_mean) > z * sds / np.sqrt(looks)))
    assert cs_misses / replications <= alpha + _tolerance(alpha, replications)
    assert naive_misses / replications > alpha + _tolerance(alpha, replications)  # the problem being solved


def test_confidence_sequence_is_never_narrower_than_the_exact_fixed_n_interval():
    for seed, n in [(0, 50), (1, 200), (2, 1000), (3, 5000)]:
        correct = np.random.default_rng(seed).random(n) < 0.8
        comparison = SequentialComparison(0.0, 0.95, 1.0)
        comparison.update(correct.astype(float))  # a mean in [0, 1]: the difference against a constant 0
        exact = binomtest(int(correct.sum()), n).proportion_ci(0.95, method="exact")
        low, high = comparison.interval
        assert low <= exact.low and high >= exact.high


def test_settling_picks_a_best_or_equivalent_candidate_at_the_stated_confidence():
    confidence, margin, replications, n = 0.9, 0.01, 250, 40000
    accuracies = [0.80, 0.78, 0.801]  # c0 and c2 are within the margin of the best; c1 is 2.1 points worse
    right = visited = c1_stopped_early = 0
    for seed in range(replications):
        # 95% of outcomes follow the shared difficulty: candidates disagree on ~3% of images, as
        # quantized and float models of one network do
        losses = _correctness_losses(np.random.default_rng(seed), accuracies, n, shared=0.95)
        decision, position = _settle(losses, margin, confidence, shard=500)
        right += decision.settled and decision.recommended in ("c0", "c2")
        c1_stopped_early += decision.comparisons[("c0", "c1")][ONE_STREAM].count < position
        visited += position
    assert right / replications >= confidence - _tolerance(1 - confidence, replications)
    assert visited / replications < n / 4  # settling saves most of the images
    assert c1_stopped_early > replications / 2  # the clearly worse candidate stops before the others


def test_false_settle_rate_at_the_margin_boundary_stays_within_the_error_rate():
    # c1 is worse by exactly the margin: recommending it as settled is an error of the rule
    confidence, replications = 0.8, 300
    false_settles = 0
    for seed in range(replications):
        losses = _correctness_losses(np.random.default_rng(10_000 + seed), [0.80, 0.79], 40000, shared=0.5)
        decision, _ = _settle(losses, margin=0.01, confidence=confidence, shard=500)
        false_settles += decision.settled and decision.recommended == "c1"
    assert false_settles / replications <= (1 - confidence) + _tolerance(1 - confidence, replications)


def test_states_name_worse_equivalent_and_recommended():
    losses = _correctness_losses(np.random.default_rng(5), [0.80, 0.60, 0.80], 20000, shared=1.0)
    decision, _ = _settle(losses, margin=0.01, confidence=0.95, shard=1000)
    assert decision.settled and decision.to_evaluate == []
    assert all(c[ONE_STREAM].confidence == pytest.approx(1 - 0.05 / 3) for c in decision.comparisons.values())  # Bonferroni
    states = decision.states()
    assert states["c1"] == "worse"
    assert sorted(states[name] for name in ("c0", "c2")) == ["equivalent", "recommended"]
    summary = json.loads(json.dumps(decision.describe()))
    assert summary["settled"] and summary["candidates"]["c1"]["state"] == "worse"
    low, high = summary["candidates"]["c1"]["difference"]  # c1 is 20 points worse
    assert 0 < low <= 0.2 <= high
    assert summary["candidates"]["c1"]["paired_images"] < summary["candidates"][decision.recommended]["paired_images"]


def _with_intervals(intervals: dict[tuple[str, str], tuple[float, float]]) -> SettlingDecision:
    """A decision over c0, c1, c2 (margin 0.01) whose pair intervals of loss(a) - loss(b) are given."""
    decision = SettlingDecision(["c0", "c1", "c2"], 0.01, 0.9, 1.0)
    for pair, (low, high) in intervals.items():
        decision.comparisons[pair][ONE_STREAM].low, decision.comparisons[pair][ONE_STREAM].high = low, high
    return decision


def test_relations_are_chained_and_a_stopped_candidate_comes_back_when_the_recommendation_changes():
    # c1 certainly beats c0 by >= 0.02, c2 is within 0.004 of c0, c1 vs c2 never compared directly:
    # chained, c1 beats c2 by >= 0.016, so c2 is worse
    chained = _with_intervals({("c0", "c1"): (0.02, 0.04), ("c0", "c2"): (-0.004, 0.004), ("c1", "c2"): (-1, 1)})
    assert chained.states() == {"c0": "worse", "c1": "recommended", "c2": "worse"}
    assert chained.settled and chained.to_evaluate == []
    # c2 equivalent to the recommended c0 has stopped; c1 is undecided against c0
    before = _with_intervals({("c0", "c1"): (-0.03, 0.002), ("c0", "c2"): (-0.004, 0.004), ("c1", "c2"): (-1, 1)})
    assert before.states() == {"c0": "recommended", "c1": "undecided", "c2": "equivalent"}
    assert before.to_evaluate == ["c0", "c1"]
    # c1 now certainly beats c0 by 0.001 to 0.01: c1 is recommended, c2 within 0.014 of it: undecided again
    after = _with_intervals({("c0", "c1"): (0.001, 0.01), ("c0", "c2"): (-0.004, 0.004), ("c1", "c2"): (-1, 1)})
    assert after.recommended == "c1" and after.states()["c2"] == "undecided"
    assert after.to_evaluate == ["c1", "c2"]


def test_spent_looks_keep_the_error_rate_where_unspent_looks_do_not():
    confidence, replications, looks, per_look = 0.9, 1000, 20, 50
    alpha = 1 - confidence
    spent_errors = unspent_errors = 0
    rng = np.random.default_rng(11)
    spent_z = [norm.ppf(1 - look_alpha(look, alpha) / 2) for look in range(1, looks + 1)]
    unspent_z = norm.ppf(1 - alpha / 2)
    for _ in range(replications):
        data = rng.normal(size=looks * per_look)  # true difference 0: any "better"/"worse" is an error
        spent, unspent = SpentComparison(0.0, confidence), SpentComparison(0.0, confidence)
        for look in range(1, looks + 1):
            sample = data[:look * per_look]
            error = sample.std(ddof=1) / math.sqrt(len(sample))
            assert spent.next_level == pytest.approx(1 - look_alpha(look, alpha))
            for comparison, z in ((spent, spent_z[look - 1]), (unspent, unspent_z)):
                comparison.add_look(sample.mean() - z * error, sample.mean() + z * error)
        spent_errors += spent.state != "undecided"
        unspent_errors += unspent.state != "undecided"
    assert spent_errors / replications <= alpha + _tolerance(alpha, replications)
    assert unspent_errors / replications > alpha + _tolerance(alpha, replications)
    assert sum(look_alpha(k, alpha) for k in range(1, 100_000)) == pytest.approx(alpha, rel=1e-4)


def test_chunked_updates_and_a_json_round_trip_continue_identically():
    rng = np.random.default_rng(2)
    diffs = rng.choice([-1.0, 0.0, 1.0], p=[0.1, 0.8, 0.1], size=3000)
    one_go = SequentialComparison(0.01, 0.95, 1.0)
    one_go.update(diffs)
    chunked = SequentialComparison(0.01, 0.95, 1.0)
    chunked.update(diffs[:700])
    chunked.update(diffs[700:1900])
    resumed = SequentialComparison.from_json(json.loads(json.dumps(chunked.to_json())))
    resumed.update(diffs[1900:])
    assert resumed.to_json() == one_go.to_json()

    losses = _correctness_losses(rng, [0.8, 0.7, 0.79], 3000, shared=0.8)
    names = ["c0", "c1", "c2"]
    whole = SettlingDecision(names, 0.01, 0.9, 1.0)
    whole.update(dict(zip(names, losses)))
    split = SettlingDecision(names, 0.01, 0.9, 1.0)
    split.update(dict(zip(names, losses[:, :1000])))
    split = SettlingDecision.from_json(json.loads(json.dumps(split.to_json())))
    split.update(dict(zip(names, losses[:, 1000:])))
    assert split.to_json() == whole.to_json()
    assert split.states() == whole.states()


def test_evaluation_record_hands_out_the_seeded_order_and_round_trips():
    record = EvaluationRecord(n_images=10, seed=4)
    order = shard_order(10, 4)
    assert sorted(order) == list(range(10)) and not np.array_equal(order, shard_order(10, 5))
    first = record.next_indices(4)
    record.add(first, ["a", "b"])
    resumed = EvaluationRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert resumed == record
    second = resumed.next_indices(4)
    resumed.add(second, ["a"])
    assert np.array_equal(np.concatenate((first, second, resumed.next_indices(4))), order)
    assert resumed.seen("a") == order[:8].tolist() and resumed.seen("b") == order[:4].tolist()
    with pytest.raises(UserError, match="next images"):
        resumed.add(first, ["a"])


def test_a_run_killed_mid_shard_resumes_by_replaying_the_record():
    names = ["c0", "c1", "c2"]
    per_image = dict(zip(names, _correctness_losses(np.random.default_rng(9), [0.8, 0.6, 0.79], 5000, 0.9)))
    record, live = EvaluationRecord(n_images=5000, seed=1), SettlingDecision(names, 0.01, 0.9, 1.0)
    for _ in range(3):
        indices, evaluated = record.next_indices(400), live.to_evaluate
        live.update({name: per_image[name][indices] for name in evaluated})
        record.add(indices, evaluated)
    killed_shard = record.next_indices(400)  # evaluated in part, never recorded
    resumed_record = EvaluationRecord.from_json(json.loads(json.dumps(record.to_json())))
    resumed = SettlingDecision(names, 0.01, 0.9, 1.0)
    replay(resumed, resumed_record, per_image)
    assert resumed.to_json() == live.to_json()
    assert "c1" not in resumed.to_evaluate and resumed_record.seen("c1") != resumed_record.seen("c0")
    assert np.array_equal(resumed_record.next_indices(400), killed_shard)
    spent = SpentComparison(0.01, 0.9)
    spent.add_look(-0.1, 0.2)
    assert SpentComparison.from_json(json.loads(json.dumps(spent.to_json()))) == spent


def test_min_plus_closure_matches_scipy_floyd_warshall():
    rng = np.random.default_rng(8)
    potentials = rng.normal(size=6)
    # weights p_j - p_i + positive slack: some edges negative, every cycle positive
    weights = potentials[None, :] - potentials[:, None] + rng.uniform(0.1, 1.0, size=(6, 6))
    np.fill_diagonal(weights, 0.0)
    assert np.allclose(min_plus_closure(weights), floyd_warshall(weights, directed=True))


def test_clipped_nll_is_the_nll_inside_the_bound_and_the_bound_outside():
    p = np.array([1.0, 0.5, 1e-3, 1e-9, 0.0])
    assert np.allclose(clipped_nll(p, bound=math.log(1e4)), [0.0, math.log(2), math.log(1e3), math.log(1e4),
                                                          math.log(1e4)])


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="outside"):
        SequentialComparison(0.01, 0.95, 1.0).update(np.array([1.5]))
    with pytest.raises(UserError, match="confidence"):
        SequentialComparison(0.01, 95, 1.0)
    with pytest.raises(UserError, match="margin"):
        SettlingDecision(["a", "b"], -0.1, 0.95, 1.0)
    with pytest.raises(UserError, match="unknown"):
        SettlingDecision(["a", "b"], 0.01, 0.95, 1.0).update({"z": np.zeros(3)})
