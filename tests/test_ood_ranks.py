"""The OOD metrics counted from dense ranks (the bootstrap's path, ``ood_metrics_per_set``) are exactly those of
the sort-based ``ood_metrics``: on random scores with many ties, against scikit-learn, and through
``score_outputs`` and ``compare`` of stored results."""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from factories import DEFAULTS, metrics_json
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

import lpmr_edge.metrics as metrics_module
from lpmr_edge.compare import compare
from lpmr_edge.metrics import dense_ranks, ood_metrics, ood_metrics_per_set
from lpmr_edge.suite import BUILTIN_SUITES
from lpmr_edge.suite.families import ood as ood_family
from lpmr_edge.suite.families.ood import OodConfig, OodProbes, ood_probe
from lpmr_edge.suite.outputs import write_result
from lpmr_edge.suite.run import score_outputs


def _ood_metrics_by_sort(id_scores: np.ndarray, ood_scores: np.ndarray, aupr: bool = True) -> dict[str, float]:
    """The oracle: ``ood_metrics`` as it was before the counting path (commit a76db43), one stable sort."""
    n_id, n_ood = len(id_scores), len(ood_scores)
    scores = np.concatenate([id_scores, ood_scores])
    order = np.argsort(-scores, kind="stable")
    last_of_tie = np.append(np.flatnonzero(np.diff(scores[order])), len(scores) - 1)
    id_above = np.cumsum(order < n_id)[last_of_tie]
    ood_above = last_of_tie + 1 - id_above
    tpr, fpr = np.concatenate(([0.0], id_above / n_id)), np.concatenate(([0.0], ood_above / n_ood))
    ranking = {"auroc": float(np.trapezoid(tpr, fpr)), "fpr_at_95_tpr": float(fpr[np.flatnonzero(tpr >= 0.95 - 1e-12)[0]])}
    if not aupr:
        return ranking

    def average_precision(true_positives: np.ndarray, false_positives: np.ndarray) -> float:
        recall = true_positives / true_positives[-1]
        precision = true_positives / (true_positives + false_positives)
        return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))

    ood_below = (n_ood - np.concatenate(([0], ood_above[:-1])))[::-1]
    id_below = (n_id - np.concatenate(([0], id_above[:-1])))[::-1]
    return {**ranking, "aupr_in": average_precision(id_above, ood_above),
            "aupr_out": average_precision(ood_below, id_below)}


def _tied(rng: np.random.Generator, n: int, shift: float, decimals: int) -> np.ndarray:
    """Normal scores rounded to ``decimals`` (many ties, within and across sets), zeros of both signs."""
    values = np.round(rng.normal(shift, 1.0, n), decimals)
    values[rng.random(n) < 0.05] = -0.0
    return values


@pytest.mark.parametrize(("n_id", "n_oods", "decimals"), [
    (1, (1,), 0), (5, (3, 1), 0), (40, (25, 60, 7), 1), (400, (150,), 1), (2000, (1800, 900), 2), (300, (700, 50), 3),
])
def test_counted_metrics_equal_the_sorted_ones_on_resampled_rows(n_id: int, n_oods: tuple[int, ...], decimals: int):
    rng = np.random.default_rng(n_id + decimals)
    id_scores = _tied(rng, n_id, 0.8, decimals)
    oods = [_tied(rng, n, -0.2 * index, decimals) for index, n in enumerate(n_oods)]
    id_ranks, *ood_ranks = dense_ranks([id_scores, *oods])
    assert id_ranks.dtype == np.int64
    for draw in range(6):  # the full sets, then bootstrap-like draws (rows with replacement, some values absent)
        id_rows = np.arange(n_id) if draw == 0 else rng.integers(0, n_id, n_id)
        ood_rows = [np.arange(n) if draw == 0 else rng.integers(0, n, n) for n in n_oods]
        for aupr in (True, False):
            counted = ood_metrics_per_set(id_ranks[id_rows], [ranks[rows] for ranks, rows in zip(ood_ranks, ood_rows)],
                                          aupr)
            for values, ood, rows in zip(counted, oods, ood_rows):
                assert values == _ood_metrics_by_sort(id_scores[id_rows], ood[rows], aupr)
                assert values == ood_metrics(id_scores[id_rows], ood[rows], aupr)


def test_dense_ranks_keep_order_and_ties_and_refuse_non_finite_scores():
    first, second = dense_ranks([np.array([0.5, -1.0, 0.0, 0.5]), np.array([-0.0, 2.0])])
    assert first.tolist() == [2, 0, 1, 2] and second.tolist() == [1, 3]
    assert dense_ranks([np.array([0.5, np.nan]), np.array([1.0])]) is None
    assert dense_ranks([np.array([0.5]), np.array([np.inf])]) is None


def test_float_scores_go_to_the_sorted_metrics():
    id_scores, ood = np.array([np.inf, np.inf, 1.0, np.nan]), np.array([np.inf, 0.5, np.nan])
    with np.errstate(invalid="ignore"):  # inf - inf between tied infinite scores
        (values,) = ood_metrics_per_set(id_scores, [ood])
        expected = _ood_metrics_by_sort(id_scores, ood)
    assert values.keys() == expected.keys()
    np.testing.assert_array_equal(list(values.values()), list(expected.values()))


@pytest.mark.parametrize(("n_id", "n_ood", "decimals"), [(400, 150, 1), (60, 300, 0), (1000, 1000, 2)])
def test_counted_metrics_match_sklearn_with_ties(n_id: int, n_ood: int, decimals: int):
    rng = np.random.default_rng(decimals)
    id_scores, ood = np.round(rng.normal(1, 1, n_id), decimals), np.round(rng.normal(0, 1, n_ood), decimals)
    truth, scores = np.r_[np.ones(n_id), np.zeros(n_ood)], np.r_[id_scores, ood]
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    id_ranks, ood_ranks = dense_ranks([id_scores, ood])
    assert ood_metrics_per_set(id_ranks, [ood_ranks]) == [pytest.approx(
        {"auroc": roc_auc_score(truth, scores), "fpr_at_95_tpr": fpr[np.argmax(tpr >= 0.95)],
         "aupr_in": average_precision_score(truth, scores), "aupr_out": average_precision_score(1 - truth, -scores)},
        abs=1e-12)]


def test_probes_hold_ranks_unless_a_score_is_not_finite():
    id_scores, ood = np.array([0.3, 0.1, 0.3]), np.array([0.2, 0.1])
    assert ood_probe(id_scores, ood).tables[0]["score"].tolist() == [2, 0, 2]
    assert ood_probe(id_scores, np.array([np.nan, 0.1])).tables[1]["score"].dtype == np.float64
    probes = OodProbes({}, {"msp": id_scores}, {"digits": {"msp": ood}, "textiles": {"msp": np.array([0.05])}},
                       (np.array([True, False, True]), {"msp": np.array([0.9, 0.4, 0.9])}))
    tables = probes.mean_probe(["digits", "textiles", "class-split"], ("msp",)).tables
    assert [table["msp"].tolist() for table in tables] == [[3, 3], [1], [2, 1], [0]]
    assert [table["class-split/msp"].tolist() for table in tables[:2]] == [[1, 1], [0]]


# ----------------------------------------------------------------------------- stored results, before and after

SUITE = replace(BUILTIN_SUITES["basic"], name="ood-ranks", bootstrap_resamples=60,
                ood=OodConfig(sets=("digits", "textiles")))


def _write_result(root: Path, precision: str, noise: float) -> Path:
    """A scored result of 10-class ID images and two OOD sets whose features are rounded (tied scores)."""
    rng = np.random.default_rng(11)
    labels = np.arange(150) % 10
    id_features = rng.uniform(0.0, 0.3, (150, 10))
    id_features[np.arange(150), labels] += rng.uniform(0.2, 1.0, 150)
    sets = {"id": (id_features, labels), "ood-digits": (rng.uniform(0.0, 0.6, (90, 10)), np.full(90, -1)),
            "ood-textiles": (rng.uniform(0.0, 0.9, (70, 10)), np.full(70, -1))}
    directory = root / "x86" / f"openvino-{precision}"
    (directory / "outputs").mkdir(parents=True)
    for name, (features, set_labels) in sets.items():
        rounded = np.round(features + noise * rng.normal(size=features.shape), 1).astype(np.float32)
        np.savez(directory / "outputs" / f"{name}.npz", features=rounded, labels=set_labels, groups=np.zeros(0),
                 id_index=np.zeros(0, dtype=np.int64), class_embeddings=np.eye(10, dtype=np.float32),
                 model_logit_scale=np.float64(10.0), runtime_identity=np.str_(precision),
                 dataset_sha256=np.str_(f"{name}-sha"), classifier_key=np.str_("classes"))
    raw = metrics_json("lpmr-tiny-fmnist", "openvino", precision, DEFAULTS)
    raw.update(datasets={name: {"name": name, "sha256": f"{name}-sha"} for name in sets}, suite=asdict(SUITE),
               metrics=score_outputs(directory, SUITE, 0))
    write_result(directory, raw, {"runtime": {"runtime": "openvino", "version": "1.0", "precision": precision,
                                              "artifact": {"target": {"name": "x86"}, "precision": precision,
                                                           "request": {}}},
                                  "machine": {"arch": "x86_64"}, "tool_versions": {},
                                  "created": "2026-01-02T03:04:05+00:00"})
    return directory


def test_score_outputs_and_compare_give_the_numbers_of_the_sort_based_metrics(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    reference, result = _write_result(tmp_path, "fp32", 0.0), _write_result(tmp_path, "int8", 0.05)
    counted = score_outputs(result, SUITE, 0), compare(result, reference)
    assert counted[0]["ood"]["sets"]["class-split"]["msp"]["ci"]["auroc"][0] is not None
    monkeypatch.setattr(ood_family, "_ranked", lambda tables: [dict(table) for table in tables])  # float scores
    monkeypatch.setattr(metrics_module, "ood_metrics", _ood_metrics_by_sort)
    sorted_ = score_outputs(result, SUITE, 0), compare(result, reference)
    assert counted[0] == sorted_[0]
    assert counted[1]["deltas"] == sorted_[1]["deltas"]
    assert any(key.startswith("ood.mean.") for key in counted[1]["deltas"])
