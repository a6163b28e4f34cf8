"""The OpenVINO path on the tiny architecture: every precision, hints, tamper detection, parity, head, bench."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lpmr_edge.backends import BACKENDS
from lpmr_edge.errors import UserError
from lpmr_edge.export import export_target
from lpmr_edge.parity import check_parity
from lpmr_edge.quantize import QuantizationOptions
from lpmr_edge.runtimes.factory import open_runtime
from lpmr_edge.runtimes.openvino.loader import summarise_execution
from lpmr_edge.runtimes.openvino.runtime import OpenVinoRuntime
from lpmr_edge.targets import load_target

MODEL = "random:lpmr-tiny-fmnist"
FAST = QuantizationOptions(subset_size=32)
PRECISIONS = BACKENDS["openvino"].precisions


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The calibration cache the module's exports fill."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, int8_cache: Path) -> dict[str, Path]:
    """Every OpenVINO precision of the x86 target, exported once for the module."""
    root = tmp_path_factory.mktemp("artifacts")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LPMR_EDGE_CACHE", str(int8_cache))
        paths = export_target(MODEL, load_target("x86"), runtimes=["openvino"], out_root=root, options=FAST,
                              isolate=False)
    return {path.name.removeprefix("openvino-"): path for path in paths}


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_every_precision_exports_both_towers_with_static_shapes(artifacts: dict[str, Path]):
    assert sorted(artifacts) == sorted(PRECISIONS)
    for precision, path in artifacts.items():
        manifest = _manifest(path)
        assert manifest["precision"] == precision and manifest["runtime"] == "openvino"
        assert set(manifest["files"]) == {"image.xml", "image.bin", "text.xml", "text.bin"}
        assert manifest["towers"]["image"]["inputs"] == [{"name": "images", "shape": [1, 3, 28, 28],
                                                          "dtype": "float32"}]
        assert manifest["towers"]["text"]["inputs"] == [{"name": "tokens", "shape": [1, 77], "dtype": "int64"}]
        assert manifest["towers"]["image"]["outputs"][0]["shape"] == [1, 64]
    assert _manifest(artifacts["int8"])["quantization"]["fake_quantize_nodes"]["image"] > 0
    assert _manifest(artifacts["int4-w"])["quantization"]["group_size"] == 128
    sizes = {p: sum(f.stat().st_size for f in artifacts[p].glob("*.bin")) for p in ("fp32", "fp16", "int8-w")}
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8-w"] < 0.6 * sizes["fp32"]


def test_precision_hints_are_recorded_and_read_back(artifacts: dict[str, Path]):
    hints = {p: _manifest(path)["runtime_config"]["properties"]["INFERENCE_PRECISION_HINT"]
             for p, path in artifacts.items()}
    assert hints == {"fp32": "f32", "bf16": "bf16", "fp16": "f32", "int8": "f32", "int8-w": "f32", "int4-w": "f32"}
    fp32 = OpenVinoRuntime(artifacts["fp32"], threads=1)
    assert fp32.describe()["execution"]["image"]["inference_precision"] == "f32"
    assert fp32.describe()["executed_precision"] == "fp32" and fp32.threads == 1
    assert _manifest(artifacts["fp32"])["runtime_config"]["properties"]["ENABLE_CPU_PINNING"] is False
    assert not fp32.describe()["execution"]["image"]["cpu_pinning"]  # unpinned unless the target asks
    assert any("pins INFERENCE_PRECISION_HINT=f32" in w for w in _manifest(artifacts["fp32"])["warnings"])
    assert any("cannot execute f16" in w for w in _manifest(artifacts["fp16"])["warnings"])
    executed = {p: OpenVinoRuntime(path).executed_precision for p, path in artifacts.items()}
    assert executed["fp16"] == "fp32 (fp16 weights)" and executed["int8"] == "int8+fp32"
    assert executed["int8-w"] == "fp32 (int8 weights, dynamic int8 activations, group 32)"
    assert executed["int4-w"].startswith("fp32 (int4+int8 weights")
    bf16 = OpenVinoRuntime(artifacts["bf16"])
    assert executed["bf16"] in ("bf16", "fp32")  # fp32 only on CPUs without bf16, and then it says so
    assert (executed["bf16"] == "fp32") == any("bf16 was requested" in w for w in bf16.warnings())


def test_execution_summary_names_integer_and_compressed_layers():
    assert summarise_execution("f32", {"FullyConnected": {"f32/f32": 3}}) == "fp32"
    assert summarise_execution("bf16", {"FullyConnected": {"bf16/f32": 3}}) == "bf16"
    assert summarise_execution("f32", {"FullyConnected": {"u8/i8": 2, "f32/f32": 1}}) == "int8+fp32"
    assert summarise_execution("f32", {"FullyConnected": {"f32/u4": 2, "f32/u8": 1}}) == "fp32 (int4+int8 weights)"
    assert summarise_execution("f32", {"FullyConnected": {"f32/f16": 2}}, 32) == "fp32 (fp16 weights)"
    assert summarise_execution("f32", {"FullyConnected": {"f32/u8": 2}}, 16) == \
        "fp32 (int8 weights, dynamic int8 activations, group 16)"


def test_parity_with_torch_per_precision(artifacts: dict[str, Path]):
    results = {p: check_parity(path, n=32) for p, path in artifacts.items()}
    for tower in ("image", "text"):
        assert results["fp32"][tower]["relative_max_diff"] < 1e-5
        assert results["fp16"][tower]["relative_max_diff"] < 1e-2
        for precision in ("bf16", "int8", "int8-w"):
            assert results[precision][tower]["cosine_mean"] > 0.99, (precision, tower)
        assert results["int4-w"][tower]["cosine_mean"] > 0.95
    assert results["fp32"]["top1_agreement"] == 1.0 and results["int8"]["top1_agreement"] >= 0.9
    assert results["fp32"]["executed_precision"] == "fp32"


def test_tampered_or_mismatched_artifacts_are_refused(artifacts: dict[str, Path], tmp_path: Path):
    copy = shutil.copytree(artifacts["fp32"], tmp_path / "copy")
    weights = bytearray((copy / "image.bin").read_bytes())
    weights[100] ^= 0xFF
    (copy / "image.bin").write_bytes(bytes(weights))
    with pytest.raises(UserError, match="does not match its manifest hash"):
        OpenVinoRuntime(copy)
    (copy / "image.bin").unlink()
    with pytest.raises(UserError, match="artifact file missing"):
        OpenVinoRuntime(copy)
    relabelled = shutil.copytree(artifacts["fp32"], tmp_path / "relabelled")
    manifest = _manifest(relabelled)
    (relabelled / "manifest.json").write_text(json.dumps({**manifest, "runtime": "executorch"}))
    with pytest.raises(UserError, match="is not an artifact for runtime 'openvino'"):
        OpenVinoRuntime(relabelled)
    with pytest.raises(UserError, match="is for runtime 'openvino'"):
        open_runtime("executorch", artifact=artifacts["fp32"])


def test_dynamic_batch_and_fused_zero_shot_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LPMR_EDGE_CACHE", str(tmp_path / "cache"))
    (path,) = export_target(MODEL, load_target("x86"), runtimes=["openvino"], precisions=["fp32"],
                            out_root=tmp_path, options=FAST, dynamic_batch=True, fuse_head=True, isolate=False)
    assert path.name == "openvino-fp32-dynbatch-head"
    runtime = OpenVinoRuntime(path)
    assert runtime.static_batch == {"image": None, "text": None}
    assert [o["name"] for o in _manifest(path)["towers"]["image"]["outputs"]] == ["features", "logits"]
    result = check_parity(path, n=8)
    assert result["image"]["relative_max_diff"] < 1e-5
    assert result["fused_head"]["max_abs_diff"] < 1e-3 and result["fused_head"]["top1_agreement"] == 1.0
    assert runtime.zero_shot_logits(np.zeros((3, 3, 28, 28), np.float32)).shape == (3, 10)


def test_calibrate_reuses_the_int8_calibration_of_export(artifacts: dict[str, Path], int8_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch, tiny_random):
    from lpmr_edge.runtimes.openvino.export import calibrate

    monkeypatch.setenv("LPMR_EDGE_CACHE", str(int8_cache))
    report = calibrate(tiny_random, FAST)
    seconds = _manifest(artifacts["int8"])["quantization"]["calibration_seconds"]
    for tower in ("image", "text"):
        row = report["towers"][tower]
        assert row["cached"] and row["seconds"] == seconds[tower] and row["fake_quantize_nodes"] > 0
        assert row["samples"] == 32 and 0.99 < row["cosine_mean"] <= 1.0
    assert report["calibration"] == _manifest(artifacts["int8"])["calibration"]


def test_bench_reports_every_figure_without_judging_them(artifacts: dict[str, Path]):
    from lpmr_edge.bench import BenchSettings, RuntimeSource, benchmark

    sources = [RuntimeSource(artifact=str(artifacts[p])) for p in ("fp32", "int8")]
    report = benchmark(sources, BenchSettings(batches=(1, 4), threads=1, warmup=1, repeats=4, rounds=2))
    assert [(row["precision"], row["batch"]) for row in report["results"]] == [("fp32", 1), ("int8", 1)]
    row = report["results"][1]
    assert {"median_ms", "p90_ms", "p99_ms", "throughput_per_s", "peak_rss_mb", "artifact_mb", "threads",
            "executed_precision", "model"} <= set(row)
    assert row["threads"] == 1 and row["executed_precision"] == "int8+fp32" and row["calls"] >= 2
    assert report["machine"]["arch"] and [s["precision"] for s in report["speedups"]] == ["int8"]


def test_bench_times_each_tower_and_the_zero_shot_path(artifacts: dict[str, Path]):
    from lpmr_edge.bench import ZERO_SHOT, BenchSettings, RuntimeSource, benchmark_towers, timed_call

    sources = [RuntimeSource(artifact=str(artifacts[p])) for p in ("fp32", "int8")]
    settings = BenchSettings(batches=(1,), threads=1, warmup=1, repeats=2, rounds=2, classes=7)
    report = benchmark_towers(sources, settings, ["image", "text", ZERO_SHOT])
    assert [(row["tower"], row["precision"]) for row in report["results"]] == [
        (tower, precision) for tower in ("image", "text", ZERO_SHOT) for precision in ("fp32", "int8")]
    by_tower = {row["tower"]: row for row in report["results"] if row["precision"] == "fp32"}
    assert by_tower[ZERO_SHOT]["artifact_mb"] == by_tower["image"]["artifact_mb"] != by_tower["text"]["artifact_mb"]
    assert [(s["tower"], s["precision"]) for s in report["speedups"]] == [
        ("image", "int8"), ("text", "int8"), (ZERO_SHOT, "int8")]
    assert report["settings"]["tower"] == ["image", "text", ZERO_SHOT]
    runtime = open_runtime(artifact=artifacts["fp32"])
    size = runtime.model_info["image_size"]
    images = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    assert timed_call(runtime, ZERO_SHOT, 7)(images).shape == (1,)  # one predicted class of 7 per image
    with pytest.raises(UserError, match="unknown tower 'audio'"):
        BenchSettings(tower="audio")


def test_target_options_reach_the_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LPMR_EDGE_CACHE", str(tmp_path / "cache"))
    target_file = tmp_path / "edge.toml"
    target_file.write_text('arch = "x86_64"\nthreads = 1\nimage_batch = 2\ntext_batch = 1\n'
                           '[runtimes.openvino]\nprecisions = ["int8-w"]\noptions = { '
                           'dynamic_quantization_group_size = 0, inference_precision = { "int8-w" = "bf16" }, '
                           'cpu_pinning = true }\n')
    (path,) = export_target(MODEL, load_target(target_file), out_root=tmp_path, options=FAST, isolate=False)
    properties = _manifest(path)["runtime_config"]["properties"]
    assert properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 0 and properties["INFERENCE_PRECISION_HINT"] == "bf16"
    assert properties["ENABLE_CPU_PINNING"] is True
    runtime = OpenVinoRuntime(path)
    assert all(facts["cpu_pinning"] for facts in runtime.describe()["execution"].values())
    assert runtime.static_batch == {"image": 2, "text": 1} and runtime.threads == 1
    assert "dynamic" not in runtime.executed_precision and "int8 weights" in runtime.executed_precision
