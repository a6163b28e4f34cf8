"""Holm and Benjamini–Hochberg corrections, claim verdicts with counts, deduplicated evidence."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from lpmr_edge.stats import (
    DOES_NOT_HOLD,
    EQUIVALENT,
    HOLDS,
    MIXED,
    NOT_SIGNIFICANT,
    Evidence,
    benjamini_hochberg,
    claim_verdicts,
    deduplicate,
    holm,
)


def test_holm_and_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted 0.005*4/1, 0.01*4/2, 0.03*4/3, 0.04*4/4 = 0.02, 0.02, 0.04, 0.04 (running min from the top)
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    many = np.random.default_rng(0).random(50) ** 3
    assert benjamini_hochberg(many) == pytest.approx(false_discovery_control(many))
    assert holm([0.9, 0.4]) == pytest.approx([0.9, 0.8]) and len(holm([])) == 0 and len(benjamini_hochberg([])) == 0


def _evidence(better_p, worse_p, null_p):
    items = [Evidence(f"better{k}", True, p) for k, p in enumerate(better_p)]
    items += [Evidence(f"worse{k}", False, p) for k, p in enumerate(worse_p)]
    return items + [Evidence(f"null{k}", bool(k % 2), p) for k, p in enumerate(null_p)]


def test_claim_verdicts_count_significant_changes_after_holm():
    evidence = _evidence([1e-5, 1e-4, 2e-4], [1e-4], [0.5] * 8)
    verdicts = claim_verdicts({"accuracy": ("improve", evidence), "spurious": ("worsen", evidence),
                               "shift": ("not improve", evidence[:3])})
    accuracy = verdicts["accuracy"]
    assert accuracy["verdict"] == MIXED and accuracy["summary"] == (
        "3 of 12 better beyond the margin, 1 worse, 0 equivalent within it")
    assert accuracy["counts"] == {"compared": 12, "better": 3, "worse": 1, "equivalent": 0, "undecided": 8,
                                  "duplicates": 0}
    assert accuracy["evidence"][0]["p_adjusted"] == pytest.approx(12e-5)
    assert verdicts["spurious"]["verdict"] == MIXED and verdicts["shift"]["verdict"] == DOES_NOT_HOLD
    assert "Holm" in accuracy["correction"]


def test_one_marginal_result_among_many_is_not_significant():
    evidence = _evidence([0.03], [], [0.4] * 13)  # "holds" under the old any-of-14-at-5% rule
    assert claim_verdicts({"noise": ("improve", evidence)})["noise"]["verdict"] == NOT_SIGNIFICANT
    only_worse = _evidence([], [1e-6], [0.4] * 3)
    verdicts = claim_verdicts({"can improve": ("improve", only_worse), "does not help": ("not improve", only_worse)})
    assert verdicts["can improve"]["verdict"] == DOES_NOT_HOLD and verdicts["does not help"]["verdict"] == HOLDS


def test_identical_outputs_count_once():
    evidence = [Evidence("x86 int8", True, 0.001, "sha-a"), Evidence("arm int8 on x86", True, 0.001, "sha-a"),
                Evidence("arm fp16", True, 0.2, "sha-b"), Evidence("host int8", False, 0.3, None),
                Evidence("host int4", False, 0.3, None)]
    unique, duplicates = deduplicate(evidence)
    assert [item.key for item in unique] == ["x86 int8", "arm fp16", "host int8", "host int4"]
    assert duplicates == {"arm int8 on x86": "x86 int8"}
    verdict = claim_verdicts({"accuracy": ("improve", evidence)})["accuracy"]
    assert verdict["verdict"] == HOLDS and verdict["counts"]["compared"] == 4 and verdict["counts"]["duplicates"] == 1
    assert verdict["summary"] == ("1 of 4 better beyond the margin, 0 worse, 0 equivalent within it "
                                  "(1 duplicate of identical outputs counted once)")
    duplicate = verdict["evidence"][1]
    assert duplicate["duplicate_of"] == "x86 int8" and duplicate["p_adjusted"] is None and not duplicate["significant"]


def test_equivalence_within_the_margin_is_its_own_outcome():
    # TOST p-values Holm-corrected on their own: 0.01*3, 0.02*2, 0.03*1 -> 0.03, 0.04, 0.04: all equivalent.
    equivalent = [Evidence(f"e{k}", bool(k % 2), 0.9, p_equivalence=p) for k, p in enumerate([0.01, 0.02, 0.03])]
    verdict = claim_verdicts({"ood": ("improve", equivalent)})["ood"]
    assert verdict["verdict"] == EQUIVALENT and verdict["counts"]["equivalent"] == 3
    assert [row["p_equivalence_adjusted"] for row in verdict["evidence"]] == pytest.approx([0.03, 0.04, 0.04])
    # a fourth, undecided comparison (TOST p 0.5): Holm over 4 gives 0.04, 0.06, 0.06, 0.5 -> 1 equivalent, 3 not
    undecided = claim_verdicts({"ood": ("improve", [*equivalent, Evidence("u", True, 0.9, p_equivalence=0.5)])})["ood"]
    assert undecided["verdict"] == NOT_SIGNIFICANT and undecided["counts"]["equivalent"] == 1
    assert undecided["counts"]["undecided"] == 3
    # a change beyond the margin decides the verdict whatever the others
    beyond = claim_verdicts({"ood": ("improve", [*equivalent, Evidence("b", True, 1e-4, p_equivalence=1.0)])})["ood"]
    assert beyond["verdict"] == HOLDS and beyond["counts"]["better"] == 1


def test_benjamini_hochberg_pools_the_report():
    claims = {"calibration": ("improve", _evidence([0.01, 0.02, 0.03, 0.04], [], [])),
              "ood": ("improve", _evidence([], [], [0.9] * 4))}
    holm_verdict = claim_verdicts(claims)["calibration"]
    bh = claim_verdicts(claims, correction="bh")
    assert holm_verdict["counts"]["better"] == 1  # Holm within the claim: 0.04, 0.06, 0.06, 0.06
    # BH over the 8 comparisons of the report: 0.01*8/1 .. 0.04*8/4 = 0.08 each -> none at 5%
    assert bh["calibration"]["counts"]["better"] == 0 and bh["calibration"]["verdict"] == NOT_SIGNIFICANT
    assert bh["calibration"]["evidence"][0]["p_adjusted"] == pytest.approx(0.08)
    alone = claim_verdicts({"calibration": claims["calibration"]}, correction="bh")["calibration"]
    assert alone["counts"]["better"] == 4 and "Benjamini" in alone["correction"]


def test_unknown_correction_or_expectation_is_refused():
    with pytest.raises(ValueError, match="correction"):
        claim_verdicts({}, correction="bonferroni")
    with pytest.raises(ValueError, match="expectation"):
        claim_verdicts({"x": ("help", [Evidence("a", True, 0.5)])})
