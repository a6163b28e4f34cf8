"""The interval of a mean over OOD sets as the report and the picker read it: seeded coverage of the
stored-intervals fallback (``bonferroni_mean``) and of the picker's paired test of the joint mean, and the
picker and the report giving the same intervals for the same result directories."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from factories import DEFAULTS, metrics_json
from scipy.special import ndtr

from lpmr_edge.compare import COMPARISON_FILE, compare, store_comparison, stored_comparison
from lpmr_edge.metrics import ood_metrics
from lpmr_edge.pick import Constraints, pick
from lpmr_edge.pipeline import RunPlan
from lpmr_edge.pipeline.steps import compare_work
from lpmr_edge.report import build_report, metric_margins
from lpmr_edge.results import BONFERRONI_MEAN, JOINT_BOOTSTRAP, Estimate, bonferroni_mean, load_results
from lpmr_edge.samples import joint_estimates, score_orders
from lpmr_edge.stats import bca_estimates, bootstrap_draws, paired_decisions
from lpmr_edge.suite import BUILTIN_SUITES
from lpmr_edge.suite.families.base import Probe
from lpmr_edge.suite.families.ood import AUROC, CLASS_SPLIT, FPR95, OodConfig, OodProbes
from lpmr_edge.suite.outputs import write_result
from lpmr_edge.suite.run import score_outputs

DRAWS, RESAMPLES, JACKKNIFE = 150, 100, 10  # kept small: each test is a few seconds of CPU
N_ID, N_OOD = 150, 80
SEPARATIONS = (1.4, 1.0, 0.6)  # ID mean minus each OOD set's mean, unit-variance normal scores


def _binormal_mean(separations: tuple[float, ...], noise: float = 0.0) -> float:
    """Population mean AUROC over the sets: Phi(separation / sqrt(2 (1 + noise^2))) averaged."""
    return float(np.mean(ndtr(np.array(separations) / np.sqrt(2 * (1 + noise ** 2)))))


def _scores(rng: np.random.Generator, separations: tuple[float, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """ID scores shared by every set, and each OOD set's scores."""
    return rng.normal(size=N_ID), [rng.normal(-separation, 1.0, N_OOD) for separation in separations]


def _auroc(tables):
    return {"auroc": ood_metrics(tables[0]["score"], tables[1]["score"])["auroc"]}


def _mean_probe(rng: np.random.Generator, sigma: float, id_scores: np.ndarray,
                oods: dict[str, np.ndarray]) -> Probe:
    """The OOD family's joint probe of the mean AUROC over ``oods`` (score ``msp``), N(0, sigma^2) added to
    every score."""
    def noisy(values: np.ndarray) -> np.ndarray:
        return values + sigma * rng.normal(size=len(values))

    probes = OodProbes({}, {"msp": noisy(id_scores)}, {name: {"msp": noisy(ood)} for name, ood in oods.items()}, None)
    return probes.mean_probe(list(oods), ("msp",))


def fallback_coverage(seed: int) -> float:
    """Share of DRAWS data sets (the same ID images against every OOD set) whose ``bonferroni_mean`` of the
    per-set 95% BCa intervals covers the population mean AUROC."""
    rng = np.random.default_rng(seed)
    population, covered = _binormal_mean(SEPARATIONS), 0
    for draw in range(DRAWS):
        id_scores, oods = _scores(rng, SEPARATIONS)
        estimates = []
        for ood in oods:
            scored = bca_estimates(_auroc, [{"score": id_scores}, {"score": ood}], RESAMPLES, draw,
                                   jackknife_groups=JACKKNIFE)["auroc"]
            estimates.append(Estimate(scored["value"], tuple(scored["ci"])))
        mean = bonferroni_mean(estimates)
        assert mean.method == BONFERRONI_MEAN and mean.value == pytest.approx(np.mean([e.value for e in estimates]))
        covered += mean.ci[0] <= population <= mean.ci[1]
    return covered / DRAWS


def paired_mean_coverage(seed: int, noise: float = 0.6) -> float:
    """Share of DRAWS data sets whose picker's paired interval of the difference in mean AUROC over two sets
    (``paired_decisions`` on the family's joint probe: the ID images drawn once for all sets and both
    candidates) covers the population difference; the candidate adds N(0, noise^2) to every score."""
    rng = np.random.default_rng(seed)
    separations = SEPARATIONS[:2]
    difference, covered = _binormal_mean(separations, noise) - _binormal_mean(separations), 0
    names = [f"set{k}" for k in range(len(separations))]
    for draw in range(DRAWS):
        id_scores, oods = _scores(rng, separations)
        reference, candidate = (_mean_probe(rng, sigma, id_scores, dict(zip(names, oods))) for sigma in (0.0, noise))
        decision = paired_decisions(reference.summary, {"fp32": reference.tables, "int8": candidate.tables},
                                    "msp/auroc", True, "fp32", n_resamples=RESAMPLES, seed=draw,
                                    jackknife_groups=JACKKNIFE)["int8"]
        covered += decision.ci[0] <= difference <= decision.ci[1]
    return covered / DRAWS


def test_the_stored_intervals_fallback_covers_the_population_mean():
    """Without per-sample outputs the mean's interval comes from the per-set 95% intervals alone
    (``bonferroni_mean``): it must cover the population mean at least 95% of the time (conservative)."""
    # 150 draws: nominal 95% minus three binomial standard errors (1.8 pp); measured 100% (seed 20261202)
    assert fallback_coverage(20261202) >= 0.897


def test_the_pickers_paired_interval_of_the_joint_mean_covers_the_population_difference():
    """The picker's paired test of the mean over sets keeps its nominal coverage."""
    # 150 draws: 95% +- three binomial standard errors = [0.897, 1.0]; measured 94.0% (seed 11)
    assert paired_mean_coverage(11) >= 0.897


def test_resamples_emitted_in_score_order_change_no_number():
    """``with_joint_intervals`` emits each resample's rows by descending score (``score_orders``): the same rows,
    so every draw of the joint mean (tied scores included, the class split's halves as two ID tables) is equal."""
    rng = np.random.default_rng(3)
    id_scores, oods = _scores(rng, SEPARATIONS)
    split = (np.arange(N_ID) % 2 == 0, {"msp": np.round(rng.normal(size=N_ID), 1)})
    names = [f"set{k}" for k in range(len(oods))]
    probes = OodProbes({}, {"msp": np.round(id_scores, 1)},
                       {name: {"msp": np.round(ood, 1)} for name, ood in zip(names, oods)}, split)
    joint = probes.mean_probe([*names, CLASS_SPLIT], ("msp",))
    orders = score_orders(joint.tables, ["msp/auroc", "msp/fpr_at_95_tpr"])
    assert len(orders) == len(joint.tables) == 2 + len(oods) and all(order is not None for order in orders)
    plain, ordered = (bootstrap_draws(joint.summary, joint.tables, 40, 0, emitted) for emitted in (None, orders))
    assert set(plain) == {"msp/auroc", "msp/fpr_at_95_tpr"}
    assert all(np.array_equal(plain[name], ordered[name]) for name in plain)


# ----------------------------------------------------------------------------- result directories

OOD_SUITE = replace(BUILTIN_SUITES["basic"], name="ood", bootstrap_resamples=50,
                    ood=OodConfig(sets=("digits", "textiles")))
ID_IMAGES, OOD_IMAGES = 120, 80


def _write_ood_result(root: Path, precision: str, noise: float) -> Path:
    """A result scored by the suite from stored outputs: 10-class ID images and two OOD sets, the same images
    for every precision, ``noise`` added to the features (a stand-in for quantization error)."""
    rng = np.random.default_rng(5)
    labels = np.arange(ID_IMAGES) % 10
    id_features = rng.uniform(0.0, 0.3, (ID_IMAGES, 10))
    id_features[np.arange(ID_IMAGES), labels] += rng.uniform(0.2, 1.0, ID_IMAGES)
    sets = {"id": (id_features, labels),
            **{f"ood-{name}": (rng.uniform(0.0, spread, (OOD_IMAGES, 10)), np.full(OOD_IMAGES, -1))
               for name, spread in (("digits", 0.6), ("textiles", 0.9))}}
    noise_rng = np.random.default_rng(99)
    directory = root / "x86" / f"openvino-{precision}"
    (directory / "outputs").mkdir(parents=True)
    for name, (features, set_labels) in sets.items():
        noisy = features + noise * noise_rng.normal(size=features.shape)
        np.savez(directory / "outputs" / f"{name}.npz", features=noisy.astype(np.float32), labels=set_labels,
                 groups=np.zeros(0), id_index=np.zeros(0, dtype=np.int64), class_embeddings=np.eye(10, dtype=np.float32),
                 model_logit_scale=np.float64(10.0), runtime_identity=np.str_(precision),
                 dataset_sha256=np.str_(f"{name}-sha"), classifier_key=np.str_("classes"))
    raw = metrics_json("lpmr-tiny-fmnist", "openvino", precision, DEFAULTS)
    raw.update(datasets={name: {"name": name, "sha256": f"{name}-sha"} for name in sets}, suite=asdict(OOD_SUITE),
               metrics=score_outputs(directory, OOD_SUITE, 0))
    manifest = {"runtime": {"runtime": "openvino", "version": "1.0", "precision": precision,
                            "artifact": {"target": {"name": "x86"}, "precision": precision, "request": {}}},
                "machine": {"arch": "x86_64"}, "tool_versions": {}, "created": "2026-01-02T03:04:05+00:00"}
    write_result(directory, raw, manifest)
    return directory


@pytest.fixture(scope="module")
def ood_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ood-results")
    _write_ood_result(root, "fp32", 0.0)
    _write_ood_result(root, "int8", 0.15)
    return root


def test_picker_and_report_give_the_same_intervals_for_the_same_data(ood_results: Path):
    results = load_results([ood_results])
    report, _ = build_report(results, Constraints(objective="auroc"))
    (choice,) = pick(results, Constraints(objective="auroc"))
    rows = {row["variant"]: row for row in report["tables"][0]["rows"]}
    stored = json.loads((ood_results / "x86" / "openvino-fp32" / "metrics.json").read_text())
    joint = stored["metrics"]["ood"]["summary"]["all"]["msp"]
    assert joint["sets"] == ["digits", "textiles", "class-split"]
    fp32 = rows["openvino fp32"]["metrics"]["auroc"]
    # the mean's interval: the joint bootstrap the suite scored, read back from the outputs, in both tools
    assert fp32["ci_method"] == JOINT_BOOTSTRAP and fp32["ci"] == joint["ci"]["mean_auroc"]
    assert fp32["value"] == pytest.approx(joint["mean_auroc"])
    assert choice.recommended.variant == "openvino fp32"
    assert choice.to_json()["recommended"]["objective"] == {"value": fp32["value"], "ci": fp32["ci"],
                                                            "ci_method": JOINT_BOOTSTRAP}
    # the paired interval of the change: the picker's decision and the report's delta (compare's joint mean)
    delta, decision = rows["openvino int8"]["metrics"]["auroc"]["delta"], choice.decisions["openvino int8"]
    assert decision.ci is not None and list(decision.ci) == delta["ci"]
    assert decision.difference == pytest.approx(delta["value"]) and decision.p_superiority == delta["p_value"]


def test_the_stored_joint_interval_is_the_one_recomputed_from_the_outputs(ood_results: Path, tmp_path: Path):
    results = load_results([ood_results])
    for result in results:
        recomputed = joint_estimates(result, (AUROC, FPR95))
        for spec in (AUROC, FPR95):  # what the suite stored beside the mean, read without its outputs
            assert result.metrics[spec.key] == recomputed[spec.key] and recomputed[spec.key].method == JOINT_BOOTSTRAP
    shutil.copytree(ood_results, tmp_path / "results")
    shutil.rmtree(tmp_path / "results" / "x86" / "openvino-int8" / "outputs")
    without_outputs = {r.variant: r for r in load_results([tmp_path / "results"])}["openvino int8"]
    assert without_outputs.metrics["auroc"] == {r.variant: r for r in results}["openvino int8"].metrics["auroc"]


def _as_written_before_joint_means(metrics_file: Path) -> None:
    """Drop what the suite stores of the joint bootstrap of the mean over sets (results of before it did)."""
    raw = json.loads(metrics_file.read_text())
    for by_score in raw["metrics"]["ood"]["summary"].values():
        for summary in by_score.values():
            summary.pop("ci_method", None)
    metrics_file.write_text(json.dumps(raw))


def test_without_outputs_the_mean_falls_back_to_the_stored_intervals_and_says_so(ood_results: Path,
                                                                                   tmp_path: Path):
    shutil.copytree(ood_results, tmp_path / "results")
    for variant in ("openvino-fp32", "openvino-int8"):
        _as_written_before_joint_means(tmp_path / "results" / "x86" / variant / "metrics.json")
    shutil.rmtree(tmp_path / "results" / "x86" / "openvino-int8" / "outputs")
    results = load_results([tmp_path / "results"])
    report, _ = build_report(results, Constraints(objective="auroc"))
    rows = {row["variant"]: row for row in report["tables"][0]["rows"]}
    stored = rows["openvino int8"]["metrics"]["auroc"]
    assert stored["ci_method"] == BONFERRONI_MEAN and rows["openvino fp32"]["metrics"]["auroc"]["ci_method"] == \
        JOINT_BOOTSTRAP
    sets = json.loads((tmp_path / "results" / "x86" / "openvino-int8" / "metrics.json").read_text())["metrics"][
        "ood"]["sets"]
    per_set = [Estimate(sets[name]["msp"]["auroc"], tuple(sets[name]["msp"]["ci"]["auroc"])) for name in sets]
    assert stored["ci"] == list(bonferroni_mean(per_set).ci)
    # wider than the mean of the per-set bounds it replaces
    assert stored["ci"][0] < np.mean([e.ci[0] for e in per_set]) and stored["ci"][1] > np.mean(
        [e.ci[1] for e in per_set])
    assert any("x86 openvino int8 (OOD AUROC)" in note and "Bonferroni" in note for note in report["notes"])


def test_a_kept_comparison_is_what_the_report_reads_until_a_result_changes(ood_results: Path, tmp_path: Path):
    shutil.copytree(ood_results, tmp_path / "results")
    result, reference = (tmp_path / "results" / "x86" / f"openvino-{p}" for p in ("int8", "fp32"))
    margins = metric_margins(Constraints(objective="auroc"))
    kept = store_comparison(result, reference, None, margins)
    assert kept == compare(result, reference, margins=margins)  # what the report would compute
    assert stored_comparison(result, reference, None, margins) == kept
    assert stored_comparison(result, reference, None, {**margins, "auroc": 0.5}) is None  # other settings

    def report_delta() -> float:
        report, _ = build_report(load_results([tmp_path / "results"]), Constraints(objective="auroc"))
        return {row["variant"]: row for row in report["tables"][0]["rows"]}["openvino int8"]["metrics"]["auroc"][
            "delta"]["value"]

    assert report_delta() == kept["deltas"]["ood.mean.msp.auroc"]["delta"]
    kept_file = json.loads((result / COMPARISON_FILE).read_text())
    kept_file["comparison"]["deltas"]["ood.mean.msp.auroc"]["delta"] = 0.125  # marks what the report reads
    (result / COMPARISON_FILE).write_text(json.dumps(kept_file))
    assert report_delta() == 0.125
    metrics = json.loads((reference / "metrics.json").read_text())
    (reference / "metrics.json").write_text(json.dumps({**metrics, "created": "2026-02-03T04:05:06+00:00"}))
    assert stored_comparison(result, reference, None, margins) is None  # the reference changed: not read
    assert report_delta() == kept["deltas"]["ood.mean.msp.auroc"]["delta"]


def _as_arm_reusing_x86(results: Path, variant: str, change_output: bool = False) -> Path:
    """A copy of the x86 result as the arm target's result that took its per-sample outputs (``reused_outputs``),
    written later; ``change_output`` alters one stored output (so the two are not scored alike)."""
    source, directory = results / "x86" / variant, results / "arm" / variant
    shutil.copytree(source, directory)
    for name, changes in (("metrics.json", {"created": "2026-03-04T05:06:07+00:00"}),
                          ("manifest.json", {"reused_outputs": {"from": f"results/x86/{variant}", "sets": []}})):
        raw = json.loads((directory / name).read_text())
        (directory / name).write_text(json.dumps({**raw, **changes}))
    if change_output:
        stored = dict(np.load(directory / "outputs" / "id.npz"))
        stored["features"][0, 0] += 1e-3
        np.savez(directory / "outputs" / "id.npz", **stored)
    return directory


@pytest.mark.parametrize("change_output", [False, True])
def test_a_comparison_of_results_scored_alike_is_taken_from_theirs(ood_results: Path, tmp_path: Path,
                                                                    change_output: bool):
    results = tmp_path / "results"
    shutil.copytree(ood_results, results)
    margins = metric_margins(Constraints(objective="auroc"))
    kept = store_comparison(results / "x86" / "openvino-int8", results / "x86" / "openvino-fp32", None, margins)
    result = _as_arm_reusing_x86(results, "openvino-int8", change_output)
    reference = _as_arm_reusing_x86(results, "openvino-fp32")
    expected = compare(result, reference, margins=margins)
    kept_file = json.loads((results / "x86" / "openvino-int8" / COMPARISON_FILE).read_text())
    kept_file["comparison"]["deltas"]["ood.mean.msp.auroc"]["delta"] = 0.125  # marks what is taken, not computed
    (results / "x86" / "openvino-int8" / COMPARISON_FILE).write_text(json.dumps(kept_file))
    taken = store_comparison(result, reference, None, margins)
    written = json.loads((result / COMPARISON_FILE).read_text())
    assert taken["result"]["dir"] == str(result) and taken["reference"]["dir"] == str(reference)
    if change_output:  # one output differs: computed from this result's own outputs
        assert taken == expected and "taken_from" not in written
        assert taken["deltas"]["ood.mean.msp.auroc"]["delta"] != 0.125
    else:
        assert taken["deltas"]["ood.mean.msp.auroc"]["delta"] == 0.125
        kept_file["comparison"]["deltas"]["ood.mean.msp.auroc"]["delta"] = kept["deltas"]["ood.mean.msp.auroc"]["delta"]
        assert {**kept_file["comparison"], "result": taken["result"], "reference": taken["reference"]} == expected
        assert written["taken_from"]["result"] == str((results / "x86" / "openvino-int8").resolve())
    assert stored_comparison(result, reference, None, margins) == taken


def test_a_run_step_that_cannot_pair_two_results_says_so_and_leaves_the_report_to_fall_back(ood_results: Path,
                                                                                          tmp_path: Path):
    results = tmp_path / "run" / "results"
    shutil.copytree(ood_results, results)
    shutil.copytree(results / "x86" / "openvino-fp32", results / "host" / "torch-fp32")
    id_outputs = results / "x86" / "openvino-int8" / "outputs" / "id.npz"
    stored = dict(np.load(id_outputs))
    np.savez(id_outputs, **{**stored, "labels": np.roll(stored["labels"], 1)})  # not the reference's images
    lines: list[str] = []
    compare_work(RunPlan(model="lpmr-tiny-fmnist", targets=("x86",), out=tmp_path / "run"), "x86", "openvino-int8",
                  [results / "x86" / "openvino-fp32"], lines.append, None, {})
    assert len(lines) == 1 and "openvino-int8 vs x86/openvino fp32 not paired" in lines[0], lines
    assert "different samples" in lines[0] and not (results / "x86" / "openvino-int8" / COMPARISON_FILE).exists()
