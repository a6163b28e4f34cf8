"""ExecuTorch export (every precision) and runtime, on the tiny stand-in architecture with one layer per tower.

Lowering takes about 3 s per transformer layer and tower plus 3 s fixed, single-threaded, so to keep this file
near a minute: a one-layer variant of lpmr-tiny-fmnist (same widths, patch size, vocabulary and ops; random
weights), complete artifacts for fp32 and int8 (calibrated), and the image tower alone for int8-dyn and int4-w
(the same export path with another quantizer). Accuracy on the trained stand-in is measured with
`lpmr-edge eval`, not here.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lpmr_edge.errors import UserError
from lpmr_edge.export import ExportRequest, export_artifact
from lpmr_edge.manifest import write_manifest
from lpmr_edge.models.bundled import CONFIG_DIR
from lpmr_edge.quantize import QuantizationOptions
from lpmr_edge.runtimes.executorch.export import (
    executed_precision,
    export_towers,
    lower_tower,
    run_program,
)
from lpmr_edge.runtimes.executorch.loader import set_threads
from lpmr_edge.runtimes.executorch.runtime import ExecuTorchRuntime
from lpmr_edge.runtimes.executorch.xnnpack_quantize import quantize_static
from lpmr_edge.targets import RuntimeTarget, load_target

ARCHITECTURE = "lpmr-tiny-1layer"
ARTIFACT_PRECISIONS = ("fp32", "int8")
# Lowest cosine to torch fp32 on real images with random weights (INT4 per-channel is the coarsest).
MIN_COSINE = {"fp32": 0.99999, "int8": 0.99, "int8-dyn": 0.99, "int4-w": 0.95}
OPTIONS = QuantizationOptions(subset_size=16)
EXPECTED_EXECUTION = {"fp32": "fp32", "int8": "int8+fp32", "int8-dyn": "int8-dyn+fp32",
                      "int4-w": "int8-dyn+fp32 (int4 weights)"}


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory: pytest.TempPathFactory):
    """The tiny stand-in architecture with one layer per tower, registered with open_clip; random weights."""
    from lpmr_edge._compat import import_open_clip
    from lpmr_edge.models import load_model

    config = json.loads((CONFIG_DIR / "lpmr-tiny-fmnist.json").read_text())
    config["vision_cfg"]["layers"] = config["text_cfg"]["layers"] = 1
    directory = tmp_path_factory.mktemp("configs")
    (directory / f"{ARCHITECTURE}.json").write_text(json.dumps(config))
    import_open_clip().add_model_config(directory)
    return load_model(f"random:{ARCHITECTURE}")


@pytest.fixture(scope="module")
def artifacts(one_layer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """x86 artifacts, exported in this process."""
    out = tmp_path_factory.mktemp("artifacts")
    target = load_target("x86")
    return {precision: export_artifact(ExportRequest(model=one_layer.spec, target=target, runtime="executorch",
                                                     precision=precision, options=OPTIONS), out, isolate=False)[0]
            for precision in ARTIFACT_PRECISIONS}


@pytest.fixture(scope="module")
def fmnist_images(one_layer) -> np.ndarray:
    from lpmr_edge.data import load_dataset, preprocess_batches

    return next(preprocess_batches(load_dataset("fmnist-test").head(5), one_layer.preprocess, 5))


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    return (reference * candidate).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(candidate, axis=1)


def _torch_image_features(clip, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return clip.image_tower()(torch.from_numpy(images)).numpy()


@pytest.mark.parametrize("precision", ARTIFACT_PRECISIONS)
def test_artifact_exports_and_runs(precision: str, artifacts: dict[str, Path], one_layer,
                                         fmnist_images: np.ndarray) -> None:
    runtime = ExecuTorchRuntime(artifacts[precision], threads=1)
    manifest = runtime.manifest
    assert set(manifest["files"]) == {"image.pte", "text.pte", "reference.npz"}
    assert runtime.static_batch == {"image": 1, "text": 1}
    assert manifest["towers"]["text"]["inputs"][0] == {"name": "tokens", "shape": [1, 77], "dtype": "int64"}
    assert manifest["abi"]["arch"] == "x86_64" and manifest["abi"]["program_format"].startswith("ET")
    described = runtime.describe()
    assert described["precision"] == precision
    assert described["executed_precision"] == EXPECTED_EXECUTION[precision]
    assert manifest["quantization"]["method"].startswith("none" if precision == "fp32" else "PT2E")
    if precision == "int8":
        quantization = manifest["quantization"]
        assert {**quantization, **quantization["towers"]["image"]}["samples"] == OPTIONS.subset_size
        assert quantization["int8_method"] == "histogram" and quantization["smooth_quant_alpha"] is None
    features = runtime.image_features(fmnist_images)
    assert _cosines(_torch_image_features(one_layer, fmnist_images), features).min() >= MIN_COSINE[precision]
    assert set(runtime.verify_outputs()) == {"image", "text"}


@pytest.mark.parametrize("precision", ["int8-dyn", "int4-w"])
def test_dynamic_precisions_lower_to_xnnpack(precision: str, one_layer, fmnist_images: np.ndarray) -> None:
    example = fmnist_images[:1]
    lowered = lower_tower(one_layer.image_tower(), torch.from_numpy(example), precision, example, OPTIONS)
    assert lowered.delegation["non_delegated"] == {}
    assert lowered.delegation["quantize_nodes_delegated"] > 0
    assert executed_precision(precision, {"image": lowered.delegation}) == EXPECTED_EXECUTION[precision]
    assert ("int4" if precision == "int4-w" else "int8") in lowered.quantization["weights"]
    outputs = np.concatenate([run_program(lowered.program, image[None]) for image in fmnist_images])
    assert _cosines(_torch_image_features(one_layer, fmnist_images), outputs).min() >= MIN_COSINE[precision]


def test_nncf_int8_method_applies_smooth_quant_and_bias_correction(one_layer, fmnist_images: np.ndarray) -> None:
    module = one_layer.image_tower().eval()
    with torch.no_grad():
        quantized, record = quantize_static(module, torch.from_numpy(fmnist_images[:1]), fmnist_images, OPTIONS, "nncf")
        outputs = np.concatenate([quantized(torch.from_numpy(image[None])).numpy() for image in fmnist_images])
    assert record["smooth_quant_alpha"] == OPTIONS.smooth_quant_alpha and record["bias_correction"] == "fast"
    assert _cosines(_torch_image_features(one_layer, fmnist_images), outputs).min() >= MIN_COSINE["int8"]


def test_delegation_is_reported(artifacts: dict[str, Path]) -> None:
    manifest = json.loads((artifacts["fp32"] / "manifest.json").read_text())
    image, text = manifest["delegation"]["image"], manifest["delegation"]["text"]
    # layer norm, attention and the q/k/v split are rewritten into XNNPACK ops, the class token's broadcast folded
    assert image["non_delegated"] == {}
    assert image["delegated"] == image["total"]
    assert "aten_embedding_default" in text["non_delegated"]  # token lookup: XNNPACK has no gather
    assert any("aten_embedding_default" in warning and "portable" in warning for warning in manifest["warnings"])
    assert manifest["abi"]["portable_operators"] == sorted({*image["non_delegated"], *text["non_delegated"]})
    quantized = json.loads((artifacts["int8"] / "manifest.json").read_text())["delegation"]
    assert all(tower["quantize_nodes_delegated"] > 0 for tower in quantized.values())


def test_an_op_outside_xnnpack_is_named() -> None:
    class CumulativeSum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(torch.nn.functional.relu(x), dim=1)

    example = torch.ones(2, 8)
    lowered = lower_tower(CumulativeSum(), example, "fp32", example.numpy(), OPTIONS)
    assert lowered.delegation["non_delegated"] == {"aten_cumsum_default": 1}
    assert lowered.delegation["delegated"] == 1 and lowered.delegation["total"] == 2


def test_tampered_artifact_is_refused(artifacts: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(artifacts["fp32"], tmp_path / "artifact")
    program = bytearray((copy / "image.pte").read_bytes())
    program[len(program) // 2] ^= 0xFF
    (copy / "image.pte").write_bytes(bytes(program))
    with pytest.raises(UserError, match="does not match its manifest hash"):
        ExecuTorchRuntime(copy)
    (copy / "image.pte").unlink()
    with pytest.raises(UserError, match="artifact file missing"):
        ExecuTorchRuntime(copy)


def test_artifact_of_another_runtime_is_refused(artifacts: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(artifacts["fp32"], tmp_path / "artifact")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "runtime": "openvino"}))
    with pytest.raises(UserError, match="not an artifact for runtime 'executorch'"):
        ExecuTorchRuntime(copy)


def test_outputs_that_differ_from_the_exporting_host_fail_verification(artifacts: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    copy = shutil.copytree(artifacts["fp32"], tmp_path / "artifact")
    manifest = json.loads((copy / "manifest.json").read_text())
    with np.load(copy / "reference.npz") as reference:
        arrays = dict(reference)
    arrays["image_expected"] = arrays["image_expected"] * -1
    np.savez_compressed(copy / "reference.npz", **arrays)
    write_manifest(copy, {key: manifest[key] for key in manifest
                          if key not in ("files", "tool_versions", "machine", "created")})
    with pytest.raises(UserError, match="image tower output"):
        ExecuTorchRuntime(copy).verify_outputs()


def test_threads_are_set_and_read_back(artifacts: dict[str, Path]) -> None:
    assert ExecuTorchRuntime(artifacts["fp32"], threads=1).describe()["threads"] == 1
    assert ExecuTorchRuntime(artifacts["fp32"]).describe()["threads"] == load_target("x86").threads
    with pytest.raises(ValueError, match="at least 1"):
        set_threads(0)


def test_unsupported_requests_are_user_errors(one_layer, tmp_path: Path) -> None:
    target = load_target("x86")
    with pytest.raises(UserError, match="static shapes"):
        export_towers(one_layer, ExportRequest(model=one_layer.spec, target=target, runtime="executorch",
                                               precision="fp32", dynamic_batch=True), None, tmp_path)
    for options in ({"threads_per_core": 2}, {"int8_method": "minmax"}):
        with_options = replace(target, runtimes={**target.runtimes, "executorch": RuntimeTarget(("fp32",), options)})
        with pytest.raises(UserError, match="the options are int8_method"):
            export_towers(one_layer, ExportRequest(model=one_layer.spec, target=with_options, runtime="executorch",
                                                   precision="fp32"), None, tmp_path)


def test_eval_and_check_run_through_executorch(artifacts: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lpmr_edge.cli import app, commands  # noqa: F401  (commands registers them with the app)

    runner = CliRunner()
    evaluated = runner.invoke(app, ["eval", "--artifact", str(artifacts["int8"]), "--runtime", "executorch",
                                    "--limit", "16", "--out", str(tmp_path / "eval"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["executed_precision"] == "int8+fp32"
    checked = runner.invoke(app, ["check", "--artifact", str(artifacts["fp32"]), "--n", "8", "--json"])
    assert checked.exit_code == 0, checked.output
    parity = json.loads(checked.stdout)
    assert parity["runtime"] == "executorch" and parity["image"]["cosine_min"] > 0.99999
    assert parity["top1_agreement"] == 1.0
