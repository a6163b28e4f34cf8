"""Corruption errors (CE, mCE, relative mCE) and near/far OOD summaries, on constructed outputs."""
from __future__ import annotations

import numpy as np
import pytest

from lpmr_edge.errors import UserError
from lpmr_edge.metrics import ood_scores
from lpmr_edge.stats import MetricRule, paired_metric_decisions
from lpmr_edge.suite.families.base import JOINT_BOOTSTRAP
from lpmr_edge.suite.families.corruptions import CorruptionConfig, corruption_error_probe, corruption_probe
from lpmr_edge.suite.families.ood import OodConfig, class_split_scores, summarise_sets, tagged_set

KINDS = ("gaussian_noise", "fog", "spatter")  # noise, weather and an extra kind (not in mCE)


def _probe(clean: np.ndarray, correct: np.ndarray, config: CorruptionConfig):
    cells = config.cells()
    return corruption_probe({"correct": clean}, {cell: {"correct": correct[:, i], "confidence": np.full(len(clean), 0.7)}
                                                 for i, cell in enumerate(cells)}, config, bins=15)


def test_corruption_errors_follow_hendrycks_and_dietterich():
    config = CorruptionConfig(kinds=KINDS, severities=(1, 2), images=4)
    # rows = 4 images; columns = (kind, severity) in config.cells() order
    result = np.array([[1, 0, 1, 1, 0, 0], [1, 1, 0, 1, 1, 0], [0, 0, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=bool)
    reference = np.array([[1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 1], [1, 1, 1, 0, 1, 1]], dtype=bool)
    clean_result, clean_reference = np.array([1, 1, 1, 0], bool), np.array([1, 1, 0, 1], bool)
    mine, theirs = _probe(clean_result, result, config), _probe(clean_reference, reference, config)
    errors_probe = corruption_error_probe(mine, theirs, config)
    values = errors_probe.summary(errors_probe.tables)
    errors_q, errors_r = 1 - result.mean(axis=0), 1 - reference.mean(axis=0)  # per cell
    ce = {kind: errors_q[2 * i:2 * i + 2].sum() / errors_r[2 * i:2 * i + 2].sum() for i, kind in enumerate(KINDS)}
    relative = {kind: (errors_q[2 * i:2 * i + 2] - 0.25).sum() / (errors_r[2 * i:2 * i + 2] - 0.25).sum()
                for i, kind in enumerate(KINDS)}
    assert all(values[f"ce/{kind}"] == pytest.approx(ce[kind]) for kind in KINDS)
    assert values["mce"] == pytest.approx((ce["gaussian_noise"] + ce["fog"]) / 2)  # the extra kind is left out
    assert values["relative_mce"] == pytest.approx((relative["gaussian_noise"] + relative["fog"]) / 2)
    assert values["groups/extra/mce"] == pytest.approx(ce["spatter"])
    itself = corruption_error_probe(theirs, theirs, config)
    assert all(value == 1.0 for value in itself.summary(itself.tables).values())
    summary = mine.summary(mine.tables)
    assert summary["groups/noise/accuracy"] == pytest.approx(result[:, :2].mean())
    assert summary["imagenet_c/accuracy"] == pytest.approx(result[:, :4].mean())
    assert summary["mean/accuracy"] == pytest.approx(result.mean())


def test_paired_mce_interval_covers_the_population_mce():
    """Seeded simulation: errors of both results driven by one latent per (image, cell) (paired), known
    population error rates; the 95% paired BCa interval of mCE - 1 (compare's) covers in 88-99%."""
    config = CorruptionConfig(kinds=("gaussian_noise", "fog"), severities=(1, 2, 3, 4, 5), images=300)
    errors_r = np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.1, 0.15, 0.2, 0.3, 0.4])
    errors_q = errors_r + np.array([0.05, 0.04, 0.06, 0.02, 0.03, -0.02, 0.01, 0.0, 0.02, 0.05])
    population = np.mean([errors_q[:5].sum() / errors_r[:5].sum(), errors_q[5:].sum() / errors_r[5:].sum()])
    rng = np.random.default_rng(20)
    covered, draws = 0, 150
    for _ in range(draws):
        latent = rng.random((300, 10))
        clean = rng.random(300) < 0.9
        mine, theirs = _probe(clean, latent >= errors_q, config), _probe(clean, latent >= errors_r, config)
        errors, reference_errors = (corruption_error_probe(mine, theirs, config),
                                    corruption_error_probe(theirs, theirs, config))
        low, high = paired_metric_decisions(errors.summary, errors.tables, reference_errors.tables,
                                            {"mce": MetricRule(higher_is_better=False)}, n_resamples=200,
                                            seed=int(rng.integers(1 << 30)))["mce"].ci
        covered += low <= population - 1 <= high
    assert 0.88 <= covered / draws <= 0.99


def test_near_ood_split_scores_use_the_id_half_only():
    rng = np.random.default_rng(0)
    cosine, labels = rng.normal(size=(40, 4)), np.arange(40) % 4
    id_half, ood_half = class_split_scores(cosine, labels, np.array([0, 2]), 10.0, 1.0)
    expected = ood_scores(cosine[:, [0, 2]], 10.0)
    assert np.array_equal(id_half["msp"], expected["msp"][labels % 2 == 0])
    assert np.array_equal(ood_half["energy"], expected["energy"][labels % 2 == 1])
    with pytest.raises(UserError, match="left one half without images"):
        class_split_scores(cosine[labels < 2], labels[labels < 2] * 2, np.array([0, 2]), 10.0, 1.0)


def test_summaries_over_sets_name_the_worst_and_flag_chance():
    sets = {name: {"msp": {"auroc": auroc, "fpr_at_95_tpr": 1 - auroc,
                           "ci": {"auroc": [auroc - 0.1, auroc + 0.1], "fpr_at_95_tpr": [0.0, 1.0]}}}
            for name, auroc in (("digits", 0.8), ("textiles", 0.36), ("class-split", 0.5))}
    summary = summarise_sets(sets, list(sets), "msp", {"auroc": [0.5, 0.6], "fpr_at_95_tpr": [0.2, 0.4]})
    assert summary["worst_set"] == "textiles" and summary["auroc"] == 0.36 and summary["ci"]["auroc"] == pytest.approx([0.26, 0.46])
    assert summary["mean_auroc"] == pytest.approx(0.5533333) and summary["below_chance"] == ["textiles", "class-split"]
    assert summary["ci"]["mean_auroc"] == [0.5, 0.6]  # the joint bootstrap's interval, given by the caller
    assert summary["ci"]["mean_fpr_at_95_tpr"] == [0.2, 0.4] and summary["ci_method"]["mean_auroc"] == JOINT_BOOTSTRAP
    assert summarise_sets(sets, ["digits"], "msp")["ci"]["mean_auroc"] == pytest.approx([0.7, 0.9])  # one set: its CI
    with pytest.raises(UserError, match="'mean'"):
        OodConfig(sets=("mean",))
    assert [tagged_set(entry) for entry in ("digits", "near:folder:/x", "far:textiles", "folder:/y")] == [
        ("far", "digits"), ("near", "folder:/x"), ("far", "textiles"), ("far", "folder:/y")]
    assert OodConfig(sets=("near:digits",)).tags() == {"digits": "near", "class-split": "near"}
