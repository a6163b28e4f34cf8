"""ExecuTorch's OpenVINO delegate (target option ``delegate = "openvino"``): export of the trained stand-in at fp32
and int8, loading in the ExecuTorch Python runtime, parity with torch, and what the manifest records."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lpmr_edge.artifact import feature_agreement
from lpmr_edge.errors import UserError
from lpmr_edge.export import ExportRequest, export_artifact
from lpmr_edge.quantize import QuantizationOptions
from lpmr_edge.runtimes.executorch import loader, openvino_delegate
from lpmr_edge.runtimes.executorch.export import requested_options
from lpmr_edge.runtimes.executorch.runtime import ExecuTorchRuntime
from lpmr_edge.targets import RuntimeTarget, Target, load_target

OPTIONS = QuantizationOptions(subset_size=16)
MIN_COSINE_TO_TORCH = {"fp32": 0.999, "int8": 0.99}  # fp32 may run in bf16: OpenVINO's CPU default here


def _target(base: str = "x86", **options: object) -> Target:
    target = load_target(base)
    return replace(target, runtimes={**target.runtimes,
                                     "executorch": RuntimeTarget(("fp32", "int8", "int8-dyn"), dict(options))})


def _request(target: Target, precision: str = "fp32") -> ExportRequest:
    return ExportRequest(model="lpmr-tiny-fmnist", target=target, runtime="executorch", precision=precision,
                         options=OPTIONS)


@pytest.fixture(scope="module")
def ov_artifacts(standin, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The stand-in exported at fp32 and int8 through the OpenVINO delegate, in this process."""
    out = tmp_path_factory.mktemp("ov-delegate")
    target = _target(delegate="openvino")
    return {precision: export_artifact(_request(target, precision), out, isolate=False, clip=standin)[0]
            for precision in ("fp32", "int8")}


@pytest.fixture(scope="module")
def images(standin) -> np.ndarray:
    from lpmr_edge.data import load_dataset, preprocess_batches

    return next(preprocess_batches(load_dataset("fmnist-test").head(4), standin.preprocess, 4))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_delegated_artifact_loads_and_matches_torch(precision: str, ov_artifacts: dict[str, Path],
                                                             standin, images: np.ndarray) -> None:
    runtime = ExecuTorchRuntime(ov_artifacts[precision])
    manifest = runtime.manifest
    config = manifest["runtime_config"]
    assert (config["backend"], config["delegate"], config["compile_spec"]) == ("OpenvinoBackend", "openvino",
                                                                               {"device": "CPU"})
    assert manifest["abi"]["backends"] == ["OpenvinoBackend"]
    assert config["openvino"] and "not settable" in config["inference_precision"]
    assert all(not tower["non_delegated"] for tower in manifest["delegation"].values())
    default = loader.openvino_cpu_default()
    assert runtime.describe()["executed_precision"] == ("" if precision == "fp32" else "int8+") + default
    if precision == "int8":
        assert all(tower["quantize_nodes_delegated"] > 0 for tower in manifest["delegation"].values())
        assert "OpenVINOQuantizer" in manifest["quantization"]["method"]
        assert manifest["quantization"]["samples"] == OPTIONS.subset_size
    with torch.no_grad():
        expected = standin.image_tower()(torch.from_numpy(images)).numpy()
    features = np.concatenate([runtime.image_features(image[None]) for image in images])
    assert feature_agreement(expected, features)["cosine_min"] >= MIN_COSINE_TO_TORCH[precision]
    assert set(runtime.verify_outputs()) == {"image", "text"}


def test_delegate_option_is_checked() -> None:
    assert requested_options(_request(_target())) == ("xnnpack", "histogram")
    assert requested_options(_request(_target(delegate="openvino", int8_method="nncf"))) == ("openvino", "nncf")
    with pytest.raises(UserError, match="delegate = one of 'xnnpack', 'openvino'"):
        requested_options(_request(_target(delegate="qnn")))
    with pytest.raises(UserError, match="not supported by ExecuTorch's OpenVINO delegate"):
        requested_options(_request(_target(delegate="openvino"), "int8-dyn"))
    with pytest.raises(UserError, match="keep_fp is not supported"):
        requested_options(replace(_request(_target(delegate="openvino"), "int8"),
                                  options=QuantizationOptions(keep_fp=("clip.visual.transformer",))))
    with pytest.raises(UserError, match="x86_64 targets only"):
        requested_options(_request(_target("arm", delegate="openvino")))


def test_loader_resolves_the_delegates_cpu_default(tmp_path: Path) -> None:
    import openvino

    assert loader.OPENVINO_CPU_DEFAULT == openvino_delegate.CPU_DEFAULT
    reported = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    assert loader.openvino_cpu_default() == reported  # the loader's rule agrees with OpenVINO on this CPU
    resolved = loader.executed_precision({"executed_precision": openvino_delegate.EXECUTED["int8"]})
    assert resolved == "int8+" + reported
    assert loader.executed_precision({"executed_precision": "int8+fp32"}) == "int8+fp32"
    flags = tmp_path / "cpuinfo"
    for line, expected in (("flags\t: fpu avx512f avx512_vnni\n", "f32"), ("flags\t: avx512f avx512_bf16\n", "bf16")):
        flags.write_text(line)
        assert loader.openvino_cpu_default(flags) == expected


@pytest.mark.slow
def test_an_aarch64_target_is_refused_even_where_it_could_take_an_x86_artifacts_files(ov_artifacts, standin):
    x86 = _target(delegate="openvino")
    aarch64 = replace(x86, name="x86-files-on-arm", arch="aarch64")  # the same export identity as x86's
    with pytest.raises(UserError, match="x86_64 targets only"):
        export_artifact(_request(aarch64), ov_artifacts["fp32"].parents[1], isolate=False, clip=standin)
