"""The shared export framework, driven through a stand-in backend: planning, manifests, resumption, atomicity."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lpmr_edge.errors import UserError
from lpmr_edge.export import (
    FORMAT,
    ExportRequest,
    artifact_path,
    export_artifact,
    plan_exports,
    request_fingerprint,
    staged_directory,
)
from lpmr_edge.manifest import verify_manifest
from lpmr_edge.quantize import QuantizationOptions, load_calibration_inputs
from lpmr_edge.targets import load_target

MODEL = "random:lpmr-tiny-fmnist"
FAST = QuantizationOptions(subset_size=16)
CONTRACT_KEYS = {"format", "runtime", "precision", "target", "model", "calibration", "quantization",
                 "runtime_config", "towers", "warnings", "request_sha256", "files", "tool_versions", "machine",
                 "created"}


class FakeBackend(types.ModuleType):
    """Implements the backend contract by writing placeholder tower files (or failing halfway)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__("lpmr_edge.runtimes.executorch.export")
        self.fail, self.calls = fail, 0

    def export_towers(self, clip: Any, request: ExportRequest, calibration: Any, staging_dir: Path) -> dict:
        self.calls += 1
        for tower in ("image", "text"):
            (staging_dir / f"{tower}.pte").write_bytes(f"{tower}-{request.precision}".encode())
            if self.fail:
                raise RuntimeError("lowering failed")
        return {"towers": {"image": {"file": "image.pte", "inputs": [{"name": "images", "shape": [1, 3, 28, 28],
                                                                      "dtype": "float32"}], "outputs": []},
                           "text": {"file": "text.pte", "inputs": [], "outputs": []}},
                "runtime_config": {"threads": request.target.threads}, "quantization": {"method": "fake"},
                "warnings": ["backend note"], "delegation": {"xnnpack": "all"}}


@pytest.fixture()
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    backend = FakeBackend()
    monkeypatch.setitem(sys.modules, "lpmr_edge.runtimes.executorch.export", backend)
    return backend


def _request(precision: str = "int8", **changes: Any) -> ExportRequest:
    return ExportRequest(model=MODEL, target=load_target("x86"), runtime="executorch", precision=precision,
                         options=FAST, **changes)


def test_manifest_has_every_contract_field_and_verifies(tmp_path: Path, fake_backend: FakeBackend, tiny_random):
    path, current = export_artifact(_request(), tmp_path, isolate=False, clip=tiny_random)
    assert not current and path == artifact_path(tmp_path, _request()).resolve()
    assert path.relative_to(tmp_path.resolve()).as_posix() == "x86/executorch-int8"
    manifest = verify_manifest(path)
    assert CONTRACT_KEYS <= set(manifest) and manifest["format"] == FORMAT
    assert set(manifest["files"]) == {"image.pte", "text.pte"}
    assert manifest["delegation"] == {"xnnpack": "all"}
    assert manifest["target"]["batch"] == {"image": 1, "text": 1} and manifest["target"]["arch"] == "x86_64"
    assert manifest["model"]["weights_sha256"] == tiny_random.weights_sha256
    calibration = load_calibration_inputs(tiny_random, FAST)
    assert manifest["calibration"] == calibration.describe() and manifest["calibration"]["n"] == 16
    assert "backend note" in manifest["warnings"] and any("random weights" in w for w in manifest["warnings"])
    assert {"openvino", "nncf", "torch"} <= set(manifest["tool_versions"])


def test_export_is_resumable_and_sensitive_to_the_request(tmp_path: Path, fake_backend: FakeBackend, tiny_random):
    export_artifact(_request(), tmp_path, isolate=False, clip=tiny_random)
    assert export_artifact(_request(), tmp_path, isolate=False, clip=tiny_random)[1] is True
    assert fake_backend.calls == 1
    # with the caller's fingerprint (a sweep worker) a current artifact is found without loading the model
    fingerprint = request_fingerprint(_request(), tiny_random.weights_sha256)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("lpmr_edge.models.load_model", lambda spec: pytest.fail("loaded the model"))
        assert export_artifact(_request(), tmp_path, isolate=False, request_sha256=fingerprint)[1] is True
    assert export_artifact(_request(), tmp_path, force=True, isolate=False, clip=tiny_random)[1] is False
    changed = ExportRequest(**{**_request().__dict__, "options": QuantizationOptions(subset_size=16, seed=1)})
    assert export_artifact(changed, tmp_path, isolate=False, clip=tiny_random)[1] is False
    (artifact_path(tmp_path, changed) / "image.pte").write_bytes(b"tampered")
    assert export_artifact(changed, tmp_path, isolate=False, clip=tiny_random)[1] is False  # rebuilt
    assert fake_backend.calls == 4


def test_a_failed_export_leaves_the_previous_artifact_and_no_debris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     tiny_random):
    monkeypatch.setitem(sys.modules, "lpmr_edge.runtimes.executorch.export", FakeBackend())
    good, _ = export_artifact(_request(), tmp_path, isolate=False, clip=tiny_random)
    before = (good / "manifest.json").read_text()
    monkeypatch.setitem(sys.modules, "lpmr_edge.runtimes.executorch.export", FakeBackend(fail=True))
    with pytest.raises(RuntimeError, match="lowering failed"):
        export_artifact(_request(), tmp_path, force=True, isolate=False, clip=tiny_random)
    assert (good / "manifest.json").read_text() == before
    assert sorted(p.name for p in good.parent.iterdir()) == ["executorch-int8"]


def test_staging_left_by_a_killed_export_is_removed(tmp_path: Path):
    destination = tmp_path / "x86" / "executorch-int8"
    destination.parent.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    left = {name: destination.parent / f".executorch-int8.staging-{name}-abc" for name in (
        f"{host}-{dead.pid}", f"{host}-{os.getpid()}", f"another-host-{dead.pid}")}
    for directory in left.values():
        (directory / "image.pte").parent.mkdir()
        (directory / "image.pte").write_bytes(b"half")
    with staged_directory(destination) as staging:
        (staging / "manifest.json").write_text("{}")
    assert not left[f"{host}-{dead.pid}"].exists()  # its export is gone
    assert left[f"{host}-{os.getpid()}"].exists() and left[f"another-host-{dead.pid}"].exists()  # may be running
    assert (destination / "manifest.json").is_file()


def test_requests_and_plans_reject_what_a_runtime_cannot_do():
    x86 = load_target("x86")
    with pytest.raises(UserError, match="cannot export precision 'int8-dyn'"):
        ExportRequest(model=MODEL, target=x86, runtime="openvino", precision="int8-dyn")
    with pytest.raises(UserError, match="unknown export runtime 'tflite'"):
        ExportRequest(model=MODEL, target=x86, runtime="tflite", precision="fp32")
    with pytest.raises(UserError, match="--fuse-head is supported for openvino only"):
        _request(fuse_head=True)
    with pytest.raises(UserError, match="not supported by runtime"):
        plan_exports(MODEL, x86, runtimes=["openvino"], precisions=["int8-dyn"])
    requests, _ = plan_exports(MODEL, x86, precisions=["int8"], fuse_head=True)
    assert [(r.runtime, r.precision, r.fuse_head) for r in requests] == [("openvino", "int8", True),
                                                                         ("executorch", "int8", False)]
    assert _request(dynamic_batch=True).batch == {"image": None, "text": None}
    assert _request(dynamic_batch=True).name == "executorch-int8-dynbatch"


def test_calibration_inputs_are_model_ready_and_seeded(tiny_random):
    first = load_calibration_inputs(tiny_random, FAST)
    again = load_calibration_inputs(tiny_random, FAST)
    other = load_calibration_inputs(tiny_random, QuantizationOptions(subset_size=16, seed=1))
    assert first.images.shape == (16, 3, 28, 28) and first.images.dtype == np.float32
    assert first.tokens.shape == (16, 77) and first.tokens.dtype == np.int64
    assert first.sha256 == again.sha256 != other.sha256
    full = load_calibration_inputs(tiny_random, QuantizationOptions())
    assert (len(full.images), len(full.tokens)) == (300, len(full.class_names) * len(full.templates))
    for bad in ({"subset_size": 0}, {"preset": "fast"}, {"ratio": 0.0}, {"group_size": 0},
                {"smooth_quant_alpha": 2.0}):
        with pytest.raises(UserError):
            QuantizationOptions(**bad)


@pytest.mark.slow
def test_cli_export_check_and_eval_through_openvino(tmp_path: Path):
    def cli(*args: str) -> Any:
        run = subprocess.run([sys.executable, "-m", "lpmr_edge", *args], check=False, capture_output=True, text=True,
                             cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    exported = cli("export", "--target", "x86", "--runtime", "openvino", "--precision", "fp32", "--model", MODEL,
                   "--out", str(tmp_path / "art"), "--json")
    artifact = exported[0]["path"]
    assert exported[0]["runtime_config"]["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    parity = cli("check", "--artifact", artifact, "--n", "16", "--json")
    assert parity["image"]["relative_max_diff"] < 1e-5 and parity["top1_agreement"] == 1.0
    evaluated = cli("eval", "--artifact", artifact, "--limit", "32", "--json", "--out", str(tmp_path / "eval"))
    assert evaluated["runtime"] == "openvino" and evaluated["executed_precision"] == "fp32"
