"""An export whose files another target's artifact already holds (same export identity: model, weights, runtime,
the files' precision, quantization, calibration, batches, runtime options, tools) takes those files instead of
exporting, with its own target's manifest; anything in the identity that differs makes it export. So does an
export at a precision whose files another precision writes (OpenVINO bf16: the FP32 IR)."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from factories import small_suite_toml

from lpmr_edge.artifact import verify_artifact
from lpmr_edge.export import ExportRequest, export_artifact, export_identity, export_outcome, with_image_batch
from lpmr_edge.manifest import sha256_file
from lpmr_edge.quantize import QuantizationOptions
from lpmr_edge.targets import RuntimeTarget, load_target

MODEL = "random:lpmr-tiny-fmnist"
FAST = QuantizationOptions(subset_size=16)
# What differs between a reused artifact's manifest and a fresh export's for the same target: when and how long
# the export took, where the files came from, and the files' sha256 (an OpenVINO IR's generated node names
# count up within a process: a second export in one process is not byte-identical).
UNSTATED = {"created", "lowering", "reused_from", "files"}
RUNTIMES = ("openvino", "executorch")


def _request(runtime: str, target: Any, options: QuantizationOptions = FAST, precision: str = "fp32") -> ExportRequest:
    target = load_target(target) if isinstance(target, str) else target
    return ExportRequest(model=MODEL, target=target, runtime=runtime, precision=precision, options=options)


def _manifest(artifact: Path) -> dict[str, Any]:
    return json.loads((artifact / "manifest.json").read_text())


def _refuse_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lpmr_edge.export._export_here", lambda *args: pytest.fail("exported instead of reusing"))


@pytest.fixture(scope="module")
def x86_exports(tmp_path_factory: pytest.TempPathFactory, tiny_random) -> Path:
    """fp32 artifacts of each runtime for the x86 target under ``<root>/x86/``, exported once."""
    root = tmp_path_factory.mktemp("x86-exports")
    for runtime in RUNTIMES:
        export_artifact(_request(runtime, "x86"), root, isolate=False, clip=tiny_random)
    return root / "x86"


@pytest.fixture()
def run_root(tmp_path: Path, x86_exports: Path) -> Path:
    """A run directory's artifact root holding the x86 artifacts."""
    shutil.copytree(x86_exports, tmp_path / "run" / "x86")
    return tmp_path / "run"


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_another_target_takes_the_files_with_the_manifest_its_own_export_writes(
        tmp_path: Path, run_root: Path, tiny_random, runtime: str, monkeypatch: pytest.MonkeyPatch):
    x86, arm = _request(runtime, "x86"), _request(runtime, "arm")
    assert export_identity(x86, tiny_random.weights_sha256) == export_identity(arm, tiny_random.weights_sha256)
    source = run_root / "x86" / f"{runtime}-fp32"
    fresh, _ = export_artifact(arm, tmp_path / "alone", isolate=False, clip=tiny_random)  # nothing to reuse there
    with monkeypatch.context() as patch:
        _refuse_exports(patch)
        reused, current = export_artifact(arm, run_root, isolate=False, clip=tiny_random)
        assert not current and reused.relative_to(run_root.resolve()).as_posix() == f"arm/{runtime}-fp32"
        assert export_outcome(reused, current) == f"files of x86/{runtime}-fp32 reused"
        assert export_artifact(arm, run_root, isolate=False, clip=tiny_random)[1] is True  # resumes

    manifest = verify_artifact(reused, runtime)  # the sha256s hold
    assert manifest["reused_from"]["artifact"] == f"x86/{runtime}-fp32"
    assert manifest["reused_from"]["manifest_sha256"] == sha256_file(source / "manifest.json")
    assert manifest["files"] == _manifest(source)["files"]
    assert all(os.path.samefile(reused / name, source / name) for name in manifest["files"]), "not hardlinked"
    assert manifest["target"]["name"] == "arm" and manifest["runtime_config"]["threads"] == 4
    exported = _manifest(fresh)
    assert {key: value for key, value in manifest.items() if key not in UNSTATED} == \
        {key: value for key, value in exported.items() if key not in UNSTATED}  # files (sha256) included


@pytest.mark.slow
def test_a_reused_artifact_loads_and_evaluates_as_its_source(tmp_path: Path, run_root: Path, tiny_random,
                                                             monkeypatch: pytest.MonkeyPatch):
    from lpmr_edge.runtimes.factory import open_runtime
    from lpmr_edge.suite import EvalSettings, evaluate

    source = run_root / "x86" / "openvino-fp32"
    _refuse_exports(monkeypatch)
    reused, _ = export_artifact(_request("openvino", "arm"), run_root, isolate=False, clip=tiny_random)
    (tmp_path / "small.toml").write_text(small_suite_toml(limit=40, corrupted_images=8))
    scored, targets = [], []
    for artifact in (source, reused):
        runtime = open_runtime(artifact=artifact, threads=1)
        result = tmp_path / "results" / artifact.parent.name
        evaluate(runtime, result, EvalSettings(suite=str(tmp_path / "small.toml")))
        scored.append(json.loads((result / "metrics.json").read_text()))
        targets.append(json.loads((result / "manifest.json").read_text())["runtime"]["artifact"]["target"]["name"])
        runtime.close()
    assert scored[1]["n"] == 40 and targets == ["x86", "arm"]
    assert scored[0]["metrics"] == scored[1]["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("change", ["image batch", "quantization option", "runtime option"])
def test_an_identity_that_differs_in_anything_that_reaches_the_files_exports(run_root: Path, tiny_random,
                                                                              change: str):
    arm = load_target("arm")
    changed = {
        "image batch": lambda: _request("openvino", replace(with_image_batch(arm, 2), name="arm")),
        "quantization option": lambda: _request("openvino", arm, QuantizationOptions(subset_size=16, seed=1)),
        "runtime option": lambda: _request("openvino", replace(arm, runtimes={
            **arm.runtimes, "openvino": RuntimeTarget(("fp32",), {"performance_hint": "THROUGHPUT"})})),
    }[change]()
    artifact, current = export_artifact(changed, run_root, isolate=False, clip=tiny_random)
    assert not current and "reused_from" not in _manifest(artifact)
    assert not os.path.samefile(artifact / "image.bin", run_root / "x86" / "openvino-fp32" / "image.bin")


@pytest.mark.slow
def test_openvino_bf16_takes_the_fp32_ir_with_its_own_runtime_settings(tmp_path: Path, run_root: Path, tiny_random,
                                                                        monkeypatch: pytest.MonkeyPatch):
    bf16 = _request("openvino", "x86", precision="bf16")
    identities = {precision: export_identity(_request("openvino", "x86", precision=precision),
                                             tiny_random.weights_sha256) for precision in ("fp32", "bf16", "fp16")}
    assert identities["bf16"] == identities["fp32"] != identities["fp16"]
    fresh, _ = export_artifact(bf16, tmp_path / "alone", isolate=False, clip=tiny_random)
    with monkeypatch.context() as patch:
        _refuse_exports(patch)
        reused, current = export_artifact(bf16, run_root, isolate=False, clip=tiny_random)
    assert export_outcome(reused, current) == "files of x86/openvino-fp32 reused"
    manifest = verify_artifact(reused, "openvino")
    assert manifest["precision"] == "bf16" and manifest["runtime_config"]["properties"]["INFERENCE_PRECISION_HINT"] \
        == "bf16"
    exported = _manifest(fresh)
    assert {key: value for key, value in manifest.items() if key not in UNSTATED} == \
        {key: value for key, value in exported.items() if key not in UNSTATED}
    assert [sha256_file(fresh / name) for name in ("image.bin", "text.bin")] == \
        [sha256_file(reused / name) for name in ("image.bin", "text.bin")]  # the same weights, bit for bit
    with monkeypatch.context() as patch:  # another target's fp32 takes fp32's files, though bf16's are the same
        _refuse_exports(patch)
        arm = export_artifact(_request("openvino", "arm"), run_root, isolate=False, clip=tiny_random)
    assert export_outcome(*arm) == "files of x86/openvino-fp32 reused"
