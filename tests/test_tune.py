"""`lpmr-edge tune`: search space, split discipline, selection rule; a small real tune per runtime (slow)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lpmr_edge.errors import UserError
from lpmr_edge.suite.families.classification import ID_SET
from lpmr_edge.suite.families.spurious import SPURIOUS_SET
from lpmr_edge.suite.run import EvalSettings
from lpmr_edge.tune import SearchSpace, Splits, TrialConfig, TuneConstraints, objective_spec
from lpmr_edge.tune.search import tune_suite
from lpmr_edge.tune.space import block_configs
from lpmr_edge.tune.splits import TEST, VALIDATION, split_sets
from lpmr_edge.tune.verdict import best_trial

pytest_plugins = ["ray_fixtures"]


def _pixels(eval_set) -> set[str]:
    """One hash per image of a set (its raw pixels)."""
    return {hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
            for image in eval_set.dataset.images.pixels}


def test_splits_are_disjoint_complete_and_the_same_for_same_size_sets():
    splits = Splits(0.3, seed=4)
    validation, test = splits.indices(1000, VALIDATION), splits.indices(1000, TEST)
    assert len(validation) == 300 and not set(validation) & set(test)
    assert sorted([*validation, *test]) == list(range(1000))
    assert np.array_equal(validation, Splits(0.3, seed=4).indices(1000, VALIDATION))
    assert not np.array_equal(validation, Splits(0.3, seed=5).indices(1000, VALIDATION))
    with pytest.raises(UserError, match="cannot be split"):
        Splits(0.5).indices(1, VALIDATION)
    with pytest.raises(UserError, match="validation fraction"):
        Splits(1.0)


def test_no_test_image_reaches_a_validation_set():
    """The ID set and the colour-cued spurious set (the same Fashion-MNIST test images) split identically."""
    suite = tune_suite("quick", "worst_group", 300)
    settings = EvalSettings(suite="quick")
    validation = {s.name: s for s in split_sets(suite, Splits(), VALIDATION, settings)}
    test = {s.name: s for s in split_sets(suite, Splits(), TEST, settings)}
    assert set(validation) == set(test) == {ID_SET, SPURIOUS_SET}
    assert len(validation[ID_SET].dataset) == len(test[ID_SET].dataset) == 150
    assert not _pixels(validation[ID_SET]) & _pixels(test[ID_SET])
    for split in (validation, test):  # same images in both sets of a split: the labels line up one to one
        assert np.array_equal(split[ID_SET].dataset.labels, split[SPURIOUS_SET].dataset.labels)
        assert np.array_equal(split[ID_SET].dataset.images.pixels, split[SPURIOUS_SET].dataset.images.pixels)


def test_objectives_and_suites():
    assert objective_spec("top1").key == "top1" and objective_spec("worst_group").key == "worst_group"
    assert objective_spec("auroc:worst").key == "auroc:worst"
    with pytest.raises(UserError):
        objective_spec("speed")
    with pytest.raises(UserError, match="--suite quick"):
        tune_suite("basic", "auroc:worst", 100)
    trimmed = tune_suite("quick", "ece", 100)
    assert trimmed.limit == 100 and trimmed.ood is None and trimmed.corruptions is None and trimmed.spurious is None


def test_trial_configs():
    uniform = TrialConfig.make("openvino", "int8", {"smooth_quant_alpha": 0.95})  # the default: dropped
    assert uniform == TrialConfig("openvino", "int8") and uniform.uniform
    tuned = TrialConfig.make("executorch", "int8", {"observer": "minmax", "keep_fp": ["b.1"]})
    assert not tuned.uniform and tuned.options.keep_fp == ("b.1",) and tuned.options.observer == "minmax"
    assert TrialConfig.from_json(json.loads(json.dumps(tuned.describe()))) == tuned
    assert tuned.key == TrialConfig.from_json(tuned.describe()).key != uniform.key
    assert [c.options.keep_fp for c in block_configs(tuned, ["b.0", "b.1", "b.2"])] == [("b.0", "b.1"), ("b.1", "b.2")]
    with pytest.raises(UserError, match="observer"):
        TrialConfig.make("executorch", "int8", {"observer": "median"})
    with pytest.raises(UserError, match="knob"):
        TrialConfig.make("openvino", "int8", {"colour": 1})
    with pytest.raises(UserError, match="cannot tune"):
        TrialConfig("executorch", "bf16")
    assert [c.label for c in SearchSpace().knob_configs("executorch")][:2] == [
        "executorch-int8", "executorch-int8 observer=minmax"]


def _trial(key: str, ece: float, top1: float, ratio: float, uniform: bool = False, precision: str = "int8") -> dict:
    return {"key": key, "uniform": uniform, "config": {"precision": precision}, "latency": {"ratio_to_int8": ratio,
            "median_ms": 10 * ratio}, "validation": {"ece": {"value": ece}, "top1": {"value": top1}}}


def test_selection_rule_respects_constraints():
    spec = objective_spec("ece")
    trials = [_trial("int8", 0.03, 0.89, 1.0, uniform=True), _trial("slow", 0.01, 0.90, 1.5),
              _trial("inaccurate", 0.02, 0.80, 1.05), _trial("good", 0.025, 0.895, 1.08)]
    constraints = TuneConstraints(max_latency_ratio=1.1, max_accuracy_drop=2.0)
    feasible = [t for t in trials if not constraints.violations(t, 0.90, spec)]
    assert [t["key"] for t in feasible] == ["int8", "good"]
    assert best_trial(feasible, spec)["key"] == "good"
    assert best_trial(trials, spec)["key"] == "slow"
    assert constraints.violations(trials[1], 0.90, spec) == ["latency 1.50x int8 > 1.1x"]
    assert TuneConstraints(max_latency_ms=10.2).violations(trials[3], None, spec) == ["latency 10.80 ms > 10.2 ms"]
    flagged = {**trials[3], "validation": {"ece": {"value": 0.0, "status": "not enough data"}}}
    assert constraints.violations(flagged, None, spec) == ["no usable validation ECE (not enough data)"]
    assert best_trial([flagged], spec) is None


SMALL_SPACE = SearchSpace(knobs={"openvino": (("int8", {}), ("int8", {"smooth_quant_alpha": -1.0})),
                                 "executorch": (("int8", {}), ("int8-dyn", {}))},
                          accuracy_control=False, sensitivity=False)


SHALLOW = "lpmr-tiny-tune-shallow"  # the stand-in's architecture with one block per tower: lowers in seconds


@pytest.fixture(scope="session")
def shallow_architecture(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register ``SHALLOW`` with open_clip in this process (trials run inline here)."""
    from lpmr_edge._compat import import_open_clip
    from lpmr_edge.models.bundled import CONFIG_DIR

    config = json.loads((CONFIG_DIR / "lpmr-tiny-fmnist.json").read_text())
    config["vision_cfg"]["layers"] = config["text_cfg"]["layers"] = 1
    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{SHALLOW}.json").write_text(json.dumps(config))
    import_open_clip().add_model_config(folder)
    return f"random:{SHALLOW}"


@pytest.mark.slow
@pytest.mark.parametrize(("runtime", "model"), [("openvino", "lpmr-tiny-fmnist"), ("executorch", "shallow")])
def test_small_tune_resumes_keeps_the_split_and_reproduces(runtime, model, tmp_path, monkeypatch, request):
    from lpmr_edge.runtimes.factory import open_runtime
    from lpmr_edge.targets import load_target
    from lpmr_edge.tune import TuneRequest, reproduce, tune
    from lpmr_edge.tune.search import TUNE_FILE

    model = request.getfixturevalue("shallow_architecture") if model == "shallow" else model
    tune_request = TuneRequest(model=model, target=load_target("x86"), runtime=runtime, objective="ece",
                               out=tmp_path / "tune", limit=120, space=SMALL_SPACE, bench_repeats=5, bench_seconds=1)
    first = tune(tune_request, log=lambda message: None)
    records = first["trials"]["records"]
    assert first["trials"]["resumed"] == 0 and len(records) == 4 and not any(r.get("error") for r in records)
    assert all(r["latency"]["ratio_to_int8"] > 0 for r in records)
    assert json.loads((tmp_path / "tune" / TUNE_FILE).read_text())["verdict"] == first["verdict"]
    assert first["verdict"].startswith(("significantly more reliable", "no configuration beat"))

    # split discipline: every validation result saw the validation images only, the test results the test images
    suite = tune_suite("basic", "ece", 120)
    splits = {split: split_sets(suite, Splits(), split, EvalSettings())[0].dataset.sha256 for split in (VALIDATION, TEST)}
    for record in records:
        stored = json.loads((Path(record["validation_dir"]) / "metrics.json").read_text())
        assert stored["datasets"][ID_SET]["sha256"] == splits[VALIDATION] and stored["split"]["name"] == VALIDATION
    for result in first["test"]["results"].values():
        assert json.loads((Path(result["dir"]) / "metrics.json").read_text())["datasets"][ID_SET]["sha256"] == splits[TEST]
    assert first["splits"]["sets"][ID_SET][VALIDATION]["n"] == first["splits"]["sets"][ID_SET][TEST]["n"] == 60

    # resume: nothing runs again, the same figures come back
    manifests = {r["key"]: (Path(r["artifact"]) / "manifest.json").stat().st_mtime_ns for r in records}
    again = tune(tune_request, log=lambda message: None)
    assert again["trials"]["resumed"] == 4
    assert {r["key"]: r["validation"] for r in again["trials"]["records"]} == {r["key"]: r["validation"] for r in records}
    assert manifests == {r["key"]: (Path(r["artifact"]) / "manifest.json").stat().st_mtime_ns
                         for r in again["trials"]["records"]}

    # the chosen configuration re-exported from its artifact manifest alone (fresh cache) computes the same
    chosen = Path(first["chosen"]["artifact"])
    monkeypatch.setenv("LPMR_EDGE_CACHE", str(tmp_path / "fresh-cache"))
    again_dir = reproduce(chosen, tmp_path / "reproduced")
    original, copy = (json.loads((d / "manifest.json").read_text()) for d in (chosen, again_dir))
    assert copy["request"] == original["request"] and copy["request_sha256"] == original["request_sha256"]
    reproduced, runtime = open_runtime(artifact=again_dir), open_runtime(artifact=chosen)
    size = runtime.model_info["image_size"]
    images = np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(reproduced.image_features(images), runtime.image_features(images), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_kept_modules_and_ignored_patterns_leave_exactly_those_operations_unquantized(standin):
    """What the FP knobs do in OpenVINO, read back the way accuracy control's reverted operations are."""
    from lpmr_edge.quantize import QuantizationOptions, load_calibration_inputs, quantize_openvino
    from lpmr_edge.runtimes.openvino.export import convert_tower
    from lpmr_edge.tune.control import quantized_operations
    from lpmr_edge.tune.space import IMAGE_PROJECTION

    samples = load_calibration_inputs(standin, QuantizationOptions(subset_size=32)).images

    def quantized(**knobs) -> set[str]:
        return quantized_operations(quantize_openvino(convert_tower(standin, "image"), samples,
                                                      TrialConfig.make("openvino", "int8", {"subset_size": 32, **knobs}).options))

    everything = quantized()
    block = quantized(keep_fp=("clip.visual.transformer.resblocks.3",))
    projection = quantized(ignored_patterns=(IMAGE_PROJECTION,))
    assert everything - block and all(".resblocks.3." in name for name in everything - block)
    assert everything - projection == {"__module.clip.visual/aten::matmul/MatMul"}
    assert block < everything


@pytest.mark.slow
def test_trials_run_on_a_ray_cluster_with_the_figures_of_an_inline_search(tmp_path, monkeypatch, ray_cluster):
    """The same small search inline and on a Ray cluster (loopback): the same trials and validation figures
    (latency is timed on this host afterwards in both, so it is not compared)."""
    from lpmr_edge.targets import load_target
    from lpmr_edge.tune import TuneRequest, tune

    address, env = ray_cluster
    for name, value in env.items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    uniform_only = SearchSpace(knobs={"openvino": (("int8", {}),)}, accuracy_control=False, sensitivity=False)
    inline = TuneRequest(model="lpmr-tiny-fmnist", target=load_target("x86"), runtime="openvino", objective="ece",
                         out=tmp_path / "inline", limit=60, space=uniform_only, bench_repeats=3, bench_seconds=1)
    local = tune(inline, log=lambda message: None)
    remote = tune(replace(inline, out=tmp_path / "ray", engine="ray", address=address), log=lambda message: None)
    assert remote["trials"]["resumed"] == 0 and not any(r.get("error") for r in remote["trials"]["records"])
    figures = [{r["key"]: r["validation"] for r in result["trials"]["records"]} for result in (local, remote)]
    assert len(figures[0]) == 3 and figures[0] == figures[1]  # the uniform fp32, int8 and int4-w trials
    assert (local["engine"], remote["engine"]) == ("local", "ray")
