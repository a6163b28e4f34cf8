"""The reliability suite end to end on the random-weight stand-in: suite files, results layout and
resume, corruptions and shifts, group-labelled sets, paired comparison and the spectrum command."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lpmr_edge.cli import app, main
from lpmr_edge.compare import compare
from lpmr_edge.data import load_dataset
from lpmr_edge.data.corruptions import CORRUPTIONS, corrupt
from lpmr_edge.data.shifts import CUE_COLOURS, shift
from lpmr_edge.data.transformed import fit_square
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import sha256_json
from lpmr_edge.report import write_report
from lpmr_edge.runtimes.base import Runtime
from lpmr_edge.runtimes.torch_runtime import TorchRuntime
from lpmr_edge.stats import MIN_GROUP_SIZE
from lpmr_edge.suite import EvalSettings, SuiteConfig, evaluate, load_suite, suite_set_names
from lpmr_edge.suite.families import CLAIMS, FAMILIES, METRIC_BY_KEY, METRICS

SMALL_SUITE = """
bootstrap_resamples = 40
limit = 60
[calibration]
coverages = [0.5, 0.9]
fit_fraction = 0.25
[ood]
sets = ["digits"]
[corruptions]
kinds = ["gaussian_noise", "impulse_noise"]
severities = [1, 5]
images = 24
[shift]
[spurious]
"""


class CoarseRuntime(Runtime):
    """The torch reference with image features rounded to a coarse grid: a stand-in for a quantized artifact."""

    name = "coarse"

    def __init__(self, reference: TorchRuntime, step: float) -> None:
        self.reference, self.step = reference, step

    @property
    def identity(self) -> str:
        return sha256_json({"reference": self.reference.identity, "step": self.step})

    @property
    def model_info(self) -> dict[str, Any]:
        return self.reference.model_info

    def _image_features(self, images: np.ndarray) -> np.ndarray:
        return np.round(self.reference._image_features(images) / self.step) * self.step

    def _text_features(self, tokens: np.ndarray) -> np.ndarray:
        return self.reference._text_features(tokens)

    def describe(self) -> dict[str, Any]:
        return {**self.reference.describe(), "runtime": self.name, "precision": "int8",
                "executed_precision": "int8 (simulated)", "identity": self.identity}


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("suites") / "small.toml"
    path.write_text(SMALL_SUITE)
    return path


@pytest.fixture(scope="module")
def runs(tiny_random, suite_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """FP32 reference and simulated-INT8 results of the small suite."""
    root = tmp_path_factory.mktemp("runs")
    reference = TorchRuntime(tiny_random, threads=1)
    settings = EvalSettings(suite=str(suite_file), batch_size=32)
    evaluate(reference, root / "fp32", settings)
    evaluate(CoarseRuntime(reference, step=0.05), root / "int8", settings)
    return {"fp32": root / "fp32", "int8": root / "int8"}


def _metrics(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "metrics.json").read_text())


def _inside(value: float, ci: list[float]) -> bool:
    return ci[0] - 1e-12 <= value <= ci[1] + 1e-12


# ----------------------------------------------------------------------------- suite definitions

def test_builtin_suites():
    quick, full = load_suite("quick"), load_suite("full")
    assert quick.corruptions.images == full.corruptions.images == 200 and quick.limit and full.limit is None
    assert all(CORRUPTIONS[kind].group == "noise" for kind in quick.corruptions.kinds) and quick.ood.class_split
    assert set(full.corruptions.kinds) == set(CORRUPTIONS) and full.corruptions.severities == (1, 2, 3, 4, 5)
    assert load_suite("basic").ood is None and load_suite("basic").calibration.bins == 15
    example = load_suite(str(Path(__file__).parents[1] / "suites" / "example.toml"))
    assert example.name == "example" and example.corruptions.images == 500 and example.spurious.set == "fmnist-colour"


def test_families_are_registered_once_and_make_the_suite_tables():
    assert len(METRIC_BY_KEY) == len(METRICS) and all(claim.metric in METRIC_BY_KEY for claim in CLAIMS)
    tables = [family.table for family in FAMILIES if family.table]
    assert [f.name for f in dataclasses.fields(SuiteConfig)] == ["name", "id", "limit", "bootstrap_resamples",
                                                                 *tables]
    assert tables == ["calibration", "ood", "corruptions", "shift", "spurious"]


@pytest.mark.parametrize("content, message", [
    ("oods = 1", "unknown key 'oods' in the top level; valid keys: name, id, limit"),
    ("limit = 'ten'", "limit must be an integer, got 'ten'"),
    ("[corruptions]\nkinds = ['rain']", "kinds must be among gaussian_noise"),
    ("[corruptions]\nseverities = [0, 7]", "severities between 1 and 5"),
    ("[calibration]\nlogit_scale = 'auto'", 'logit_scale must be "model" or a positive number'),
    ("[calibration]\nbins = 15\nbins = 10", "is not valid TOML"),
    ("[ood]\nsets = 'digits'", "[ood] sets must be a list of strings"),
])
def test_bad_suite_files_are_one_line_errors(tmp_path: Path, content: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(UserError) as error:
        load_suite(str(path))
    assert message in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_cli_prints_a_bad_suite_as_one_line(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "bad.toml").write_text("[shift]\nsets = 'x'")
    monkeypatch.setattr(sys, "argv", ["lpmr-edge", "eval", "--model", "random:lpmr-tiny-fmnist",
                                      "--suite", str(tmp_path / "bad.toml")])
    with pytest.raises(SystemExit) as exit_:
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and "unknown key 'sets' in [shift]" in lines[0]
    with pytest.raises(UserError, match="unknown suite 'fast'; use basic, quick, full"):
        load_suite("fast")


# ----------------------------------------------------------------------------- results

def test_results_layout_and_metrics_schema(runs: dict[str, Path], suite_file: Path):
    directory = runs["fp32"]
    result, manifest = _metrics(directory), json.loads((directory / "manifest.json").read_text())
    suite = load_suite(str(suite_file))
    assert sorted(p.stem for p in (directory / "outputs").glob("*.npz")) == sorted(suite_set_names(suite))
    metrics = result["metrics"]
    accuracy, calibration = metrics["accuracy"], metrics["calibration"]
    assert accuracy["n"] == result["n"] == 60 and _inside(accuracy["top1"], accuracy["ci"]["top1"])
    assert {"ece", "ece_equal_mass", "mce", "nll", "brier", "aurc", "selective_accuracy@0.5",
            "selective_accuracy@0.9"} <= set(calibration["ci"])
    assert all(_inside(calibration[name], ci) for name, ci in calibration["ci"].items())
    assert calibration["logit_scale"] == {"setting": "model", "value": pytest.approx(result["logit_scale"])}
    assert sum(bin_["count"] for bin_ in calibration["reliability_diagram"]) == 60
    fitted = calibration["fitted_temperature"]
    assert fitted["fit_n"] == 15 and fitted["n"] == 45 and fitted["temperature"] == pytest.approx(
        1 / fitted["logit_scale"])
    ood = metrics["ood"]
    assert ood["positive_class"].startswith("in-distribution is the positive class")
    assert set(ood["sets"]["digits"]) == {"tag", "n", "id_n", "below_chance", "msp", "mcm", "max_logit", "energy"}
    assert _inside(ood["sets"]["digits"]["mcm"]["auroc"], ood["sets"]["digits"]["mcm"]["ci"]["auroc"])
    split, near = ood["class_split"], ood["sets"]["class-split"]
    assert ood["sets"]["digits"]["tag"] == "far" and near["tag"] == "near" and near["n"] + near["id_n"] == 60
    assert sorted(split["id_classes"] + split["ood_classes"]) == list(range(10)) and len(split["id_classes"]) == 5
    worst = ood["summary"]["all"]["msp"]
    assert worst["worst_set"] == min(ood["sets"], key=lambda name: ood["sets"][name]["msp"]["auroc"])
    assert worst["auroc"] == ood["sets"][worst["worst_set"]]["msp"]["auroc"] and worst["mean_auroc"] == pytest.approx(
        np.mean([ood["sets"][name]["msp"]["auroc"] for name in ("digits", "class-split")]))
    assert ood["summary"]["near"]["msp"]["sets"] == ["class-split"] and ood["summary"]["far"]["msp"]["sets"] == ["digits"]
    assert _inside(worst["mean_auroc"], worst["ci"]["mean_auroc"])  # the joint bootstrap's interval of the mean
    near = ood["summary"]["near"]["mcm"]
    assert near["ci"]["mean_auroc"] == ood["sets"]["class-split"]["mcm"]["ci"]["auroc"]  # a mean of one set
    corruptions = metrics["corruptions"]
    assert corruptions["images"] == 24 and set(corruptions["impulse_noise"]) == {"1", "5", "mean"}
    cell = corruptions["gaussian_noise"]["5"]
    assert cell["relative_accuracy"] == pytest.approx(cell["accuracy"] / corruptions["clean_accuracy"])
    assert corruptions["mean"]["accuracy"] == pytest.approx(np.mean(
        [corruptions[k][s]["accuracy"] for k in ("gaussian_noise", "impulse_noise") for s in ("1", "5")]))
    assert corruptions["groups"]["noise"]["accuracy"] == corruptions["imagenet_c"]["accuracy"] == pytest.approx(
        corruptions["mean"]["accuracy"]) and list(corruptions["groups"]) == ["noise"]
    assert metrics["shift"]["set"] == "rotate-scale" and "accuracy_drop" in metrics["shift"]["ci"]
    spurious = metrics["spurious"]
    assert spurious["worst_group"] == min(group["accuracy"] for group in spurious["groups"].values())
    assert result["settings"]["seed"] == 0 and result["suite"]["name"] == "small"
    assert set(manifest["datasets"]) == set(suite_set_names(suite))
    assert manifest["datasets"]["spurious"]["sha256"] and manifest["runtime"]["runtime"] == "torch"


def test_interrupted_run_resumes_with_the_finished_sets(runs: dict[str, Path], tiny_random, suite_file: Path,
                                                        tmp_path: Path):
    runtime = TorchRuntime(tiny_random, threads=1)
    calls: list[int] = []
    original = runtime._image_features

    def interrupted_after_three_sets(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        if len(calls) > 3:
            raise KeyboardInterrupt
        return original(images)

    runtime._image_features = interrupted_after_three_sets
    settings = EvalSettings(suite=str(suite_file), batch_size=64)  # one batch per set
    with pytest.raises(KeyboardInterrupt):
        evaluate(runtime, tmp_path, settings)
    assert not (tmp_path / "metrics.json").exists() and len(list((tmp_path / "outputs").glob("*.npz"))) == 3
    calls.clear()
    runtime._image_features = lambda images: calls.append(len(images)) or original(images)
    evaluate(runtime, tmp_path, settings)
    assert len(calls) == len(suite_set_names(load_suite(str(suite_file)))) - 3
    assert _metrics(tmp_path)["metrics"] == _metrics(runs["fp32"])["metrics"]  # same numbers, deterministic


# ----------------------------------------------------------------------------- comparison and spectrum

def test_compare_against_the_reference(runs: dict[str, Path]):
    comparison = compare(runs["int8"], runs["fp32"])
    deltas = comparison["deltas"]
    assert {"id.top1", "id.ece", "id.nll", "ood.digits.msp.auroc", "ood.digits.mcm.fpr_at_95_tpr",
            "corruptions.mean.accuracy", "corruptions.gaussian_noise.mean.accuracy", "shift.top1",
            "spurious.worst_group"} <= set(deltas)
    ece = deltas["id.ece"]
    assert ece["delta"] == pytest.approx(ece["result"] - ece["reference"]) and ece["lower_is_better"]
    assert ece["statement"].startswith("ECE: ") and ece["verdict"] in ("improved", "worsened",
                                                                       "no significant change")
    assert comparison["result"]["executed_precision"] == "int8 (simulated)"
    assert comparison["spectrum"]["relative_residual_norm"] > 0
    metrics = _metrics(runs["int8"])["metrics"]
    assert all(set(spec.expand(spec.paired, metrics)) <= set(deltas) for spec in METRICS)  # report reads these
    assert {"ood.class-split.msp.auroc", "corruptions.groups.noise.accuracy", "corruptions.ce.gaussian_noise",
            "corruptions.relative_ce.impulse_noise", "corruptions.groups.noise.mce", "corruptions.mce",
            "corruptions.relative_mce"} <= set(deltas)
    reference = _metrics(runs["fp32"])["metrics"]["corruptions"]

    def error_sum(corruptions: dict[str, Any], kind: str) -> float:
        return sum(1 - corruptions[kind][severity]["accuracy"] for severity in ("1", "5"))

    ce = {kind: error_sum(metrics["corruptions"], kind) / error_sum(reference, kind)
          for kind in ("gaussian_noise", "impulse_noise")}
    assert deltas["corruptions.ce.gaussian_noise"]["result"] == pytest.approx(ce["gaussian_noise"])
    mce = deltas["corruptions.mce"]
    assert mce["result"] == pytest.approx(np.mean(list(ce.values()))) and mce["reference"] == 1.0
    assert mce["delta"] == pytest.approx(mce["result"] - 1) and mce["lower_is_better"]
    identical = compare(runs["fp32"], runs["fp32"])
    assert all((d["delta"] == 0 or ("relative_" in key and np.isnan(d["delta"])))  # undefined: reference not degraded
               and d["verdict"] == "no significant change" for key, d in identical["deltas"].items())
    assert identical["mcnemar"]["id"] == {"only_result_correct": 0, "only_reference_correct": 0, "p_value": 1.0}


def test_report_compares_stored_outputs_pairwise(runs: dict[str, Path], tmp_path: Path):
    report = write_report([runs["fp32"], runs["int8"]], tmp_path / "report")
    (row,) = [row for table in report["tables"] for row in table["rows"] if row["reference"]]
    assert row["variant"] == "coarse int8" and row["reference"] == "torch fp32"
    assert row["spectrum"]["relative_residual_norm"] > 0 and "per_rank" not in row["spectrum"]
    paired = compare(runs["int8"], runs["fp32"])["deltas"]
    assert row["metrics"]["top1"]["delta"]["method"] == "paired bootstrap on the same samples"
    assert row["metrics"]["top1"]["delta"]["value"] == pytest.approx(paired["id.top1"]["delta"])
    assert row["metrics"]["auroc"]["delta"]["value"] == pytest.approx(np.mean(  # the mean over the OOD sets
        [paired[f"ood.{name}.msp.auroc"]["delta"] for name in ("digits", "class-split")]))
    mean = paired["ood.mean.msp.auroc"]  # ... bootstrapped jointly (ID images drawn once for both sets)
    assert mean["delta"] == pytest.approx(row["metrics"]["auroc"]["delta"]["value"])
    assert row["metrics"]["auroc"]["delta"]["ci"] == pytest.approx(mean["ci"]) and mean["ci"][0] <= mean["delta"]
    assert row["metrics"]["auroc"]["delta"]["margin"] == 0.005  # pick's default margin, tested in every delta
    compared = row["compared"]  # metrics that exist only against the reference: mCE by group, shown per target
    assert compared["corruptions.groups.noise.mce"]["result"] == pytest.approx(
        paired["corruptions.groups.noise.mce"]["result"]) and compared["corruptions.mce"]["metric"] == "mce"
    assert "ce" not in {entry["metric"] for entry in compared.values()}  # per-kind CE stays in compare's JSON
    assert "noise mCE" in (tmp_path / "report" / "report.md").read_text()


def test_compare_refuses_different_samples(runs: dict[str, Path], tmp_path: Path):
    shutil.copytree(runs["fp32"], tmp_path / "other")
    stored_path = tmp_path / "other" / "outputs" / "shift.npz"
    with np.load(stored_path) as stored:
        arrays = {**stored, "dataset_sha256": np.str_("0" * 64)}
    np.savez_compressed(stored_path, **arrays)
    with pytest.raises(UserError, match="evaluated different samples for set 'shift'"):
        compare(tmp_path / "other", runs["fp32"])


def test_cli_eval_compare_and_spectrum(runs: dict[str, Path], suite_file: Path, tmp_path: Path):
    import lpmr_edge.cli.commands  # noqa: F401  (registers the commands)

    runner = CliRunner()
    run = runner.invoke(app, ["eval", "--model", "random:lpmr-tiny-fmnist", "--suite", str(suite_file),
                              "--out", str(runs["fp32"]), "--json"])
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout)
    assert summary["n"] == 60 and summary["suite"] == "small" and set(summary["ood_auroc"]["digits"]) == {
        "msp", "mcm", "max_logit", "energy"}
    assert {"top1", "top5", "ece", "nll", "corrupted_accuracy", "shifted_accuracy",
            "worst_group_accuracy"} <= set(summary)
    assert set(summary["ood_auroc_worst"]) == {"all", "near", "far"} and set(summary["ood_auroc_worst"]["far"]) == {
        "digits"} and summary["corrupted_group_accuracy"]["noise"] == summary["corrupted_accuracy"]
    run = runner.invoke(app, ["compare", str(runs["int8"]), "--reference", str(runs["fp32"]), "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["deltas"]["id.top1"]["ci"][0] is not None
    plot = tmp_path / "spectrum.png"
    run = runner.invoke(app, ["spectrum", str(runs["int8"]), "--reference", str(runs["fp32"]), "--plot", str(plot),
                              "--head-fraction", "0.2", "--json"])
    assert run.exit_code == 0, run.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads((runs["int8"] / "spectrum.json").read_text())
    assert stored["head_ranks"] == 13 and len(stored["per_rank"]["residual_share"]) == stored["ranks"] == 64
    assert stored["per_rank"]["reference_share"][-1] == pytest.approx(0.0, abs=1e-9)  # 60 samples: null space


# ----------------------------------------------------------------------------- data transforms

def test_corruptions_are_seeded_imagenet_c_and_subset_invariant():
    assert CORRUPTIONS["gaussian_noise"].group == "noise"
    dataset = load_dataset("fmnist-test").head(20)
    noisy = corrupt(dataset, "gaussian_noise", 5, seed=0)
    first = np.asarray(noisy.images.load(7))
    assert np.array_equal(first, np.asarray(corrupt(dataset, "gaussian_noise", 5, seed=0).images.load(7)))
    assert np.array_equal(first, np.asarray(noisy.subset([7, 3]).images.load(0)))
    assert not np.array_equal(first, np.asarray(corrupt(dataset, "gaussian_noise", 5, seed=1).images.load(7)))
    assert first.shape == (224, 224, 3)
    clean = np.asarray(fit_square(dataset.images.load(7), 224), dtype=float)
    deviation = [np.abs(np.asarray(corrupt(dataset, "gaussian_noise", s, 0).images.load(7), dtype=float)
                        - clean).mean() for s in (1, 5)]
    assert deviation[0] < deviation[1]
    assert noisy.sha256 != dataset.sha256 != corrupt(dataset, "gaussian_noise", 4, 0).sha256
    with pytest.raises(UserError, match="unknown corruption 'rain'"):
        corrupt(dataset, "rain", 1, 0)


def test_shifts_are_deterministic_non_noise_transforms():
    dataset = load_dataset("fmnist-test").head(5)
    rotated = shift(dataset, "rotate-scale", seed=0)
    image = np.asarray(rotated.images.load(2))
    assert np.array_equal(image, np.asarray(shift(dataset, "rotate-scale", seed=0).images.load(2)))
    assert not np.array_equal(image, np.asarray(dataset.images.load(2)))
    inverted = np.asarray(shift(dataset, "invert", seed=0).images.load(2))
    assert np.array_equal(inverted, 255 - np.asarray(dataset.images.load(2)))


def test_colour_cued_set_balances_each_class_between_aligned_and_conflicting_colours():
    dataset = load_dataset("fmnist-colour")
    colours, labels = dataset.images.colour_ids, dataset.labels
    assert np.bincount(dataset.groups).tolist() == [500] * 20  # group = 2 * label + conflicting
    assert np.array_equal(dataset.groups // 2, labels)
    assert np.array_equal(dataset.groups % 2 == 0, colours == labels)
    for label in range(10):  # the conflicting half spreads over the nine other colours (500 / 9: 55 or 56 each)
        spread = np.bincount(colours[(labels == label) & (colours != label)], minlength=10)
        assert spread[label] == 0 and sorted(np.delete(spread, label)) == [55] * 4 + [56] * 5
    assert np.bincount(dataset.head(2000).groups).min() >= MIN_GROUP_SIZE  # the quick suite's groups are usable
    for index in (0, 1):
        corner = np.asarray(dataset.images.load(index))[0, 0] / 255.0  # a background pixel takes the colour
        assert corner == pytest.approx(np.asarray(CUE_COLOURS[colours[index]]), abs=0.01)


def _waterbirds(root: Path, rows: list[tuple[str, int, int, int]], header: str = "img_filename,y,place,split"):
    root.mkdir()
    lines = [header]
    for name, label, place, split in rows:
        Image.new("RGB", (16, 16), (label * 200, place * 200, 50)).save(root / name)
        lines.append(f"{name},{label},{place},{split}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def test_waterbirds_layout(tmp_path: Path):
    rows = [("a.jpg", 0, 0, 2), ("b.jpg", 0, 1, 2), ("c.jpg", 1, 0, 2), ("d.jpg", 1, 1, 2), ("e.jpg", 1, 1, 0)]
    _waterbirds(tmp_path / "wb", rows)
    dataset = load_dataset(f"waterbirds:{tmp_path / 'wb'}")
    assert len(dataset) == 4 and list(dataset.groups) == [0, 1, 2, 3] and list(dataset.labels) == [0, 0, 1, 1]
    assert dataset.class_names == ("landbird", "waterbird")
    _waterbirds(tmp_path / "bad", rows, header="img_filename,y,split,x")
    with pytest.raises(UserError, match="lacks column\\(s\\) place"):
        load_dataset(f"waterbirds:{tmp_path / 'bad'}")
    (tmp_path / "wb" / "a.jpg").unlink()
    with pytest.raises(UserError, match="1 image\\(s\\) listed in .* are missing"):
        load_dataset(f"waterbirds:{tmp_path / 'wb'}")


def test_spurious_family_needs_a_group_labelled_set(tiny_random, tmp_path: Path):
    (tmp_path / "suite.toml").write_text("limit = 8\n[spurious]\nset = 'fmnist-test'\n")
    with pytest.raises(UserError, match="has no group labels; use fmnist-colour or waterbirds:PATH"):
        evaluate(TorchRuntime(tiny_random, threads=1), tmp_path / "r", EvalSettings(suite=str(tmp_path / "suite.toml")))


def test_a_user_folder_is_a_tagged_ood_set(tiny_random, tmp_path: Path):
    for index in range(6):
        (tmp_path / "photos" / "any").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (40 * index, 90, 200)).save(tmp_path / "photos" / "any" / f"{index}.png")
    folder = f"folder:{tmp_path / 'photos'}"
    (tmp_path / "suite.toml").write_text(f"limit = 12\nbootstrap_resamples = 20\n[ood]\nsets = ['near:{folder}', "
                                         "'digits']\nclass_split = false\n")
    result = evaluate(TorchRuntime(tiny_random, threads=1), tmp_path / "r", EvalSettings(suite=str(tmp_path / "suite.toml")))
    ood = result["metrics"]["ood"]
    assert ood["sets"][folder]["tag"] == "near" and ood["sets"][folder]["n"] == 6 and "class_split" not in ood
    assert ood["summary"]["near"]["msp"]["sets"] == [folder] and ood["summary"]["far"]["msp"]["sets"] == ["digits"]
    assert ood["summary"]["all"]["msp"]["below_chance"] == [name for name in (folder, "digits")
                                                            if ood["sets"][name]["msp"]["auroc"] <= 0.5]
    with pytest.raises(UserError, match="sets must be distinct"):
        load_suite(str(tmp_path / "suite.toml")).ood.__class__(sets=("digits", "far:digits"))
