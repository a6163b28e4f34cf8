"""The torch reference path end to end through the CLI, the text-embedding cache and the manifest."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpmr_edge.runtimes.torch_runtime import TorchRuntime
from lpmr_edge.suite import EvalSettings, evaluate
from lpmr_edge.zeroshot import class_embeddings


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lpmr_edge", *args], capture_output=True, text=True, cwd=cwd, check=False)


def test_eval_json_summary_and_results_layout(tmp_path: Path):
    out = tmp_path / "results"
    run = _cli("eval", "--model", "lpmr-tiny-fmnist", "--runtime", "torch", "--limit", "200", "--out", str(out),
               "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["n"] == 200 and summary["runtime"] == "torch" and summary["model"] == "lpmr-tiny-fmnist"
    assert 0.7 < summary["top1"] <= summary["top5"] <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert metrics["metrics"]["accuracy"]["top1"] == summary["top1"]
    assert manifest["runtime"]["model"]["weights_sha256"] and manifest["dataset"]["sha256"]
    assert {"torch", "open_clip_torch", "numpy"} <= set(manifest["tool_versions"])
    outputs = np.load(out / "outputs" / "id.npz")
    assert outputs["features"].shape == (200, 64) and outputs["labels"].shape == (200,)


def test_eval_random_vit_b32_offline(tmp_path: Path):
    run = _cli("eval", "--model", "random:ViT-B-32", "--runtime", "torch", "--limit", "8", "--json",
               "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["n"] == 8 and summary["model_label"] == "random weights, not a trained model"


def test_bad_input_is_one_line_not_a_traceback(tmp_path: Path):
    run = _cli("eval", "--model", "random:NoSuchNet", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error: unknown open_clip architecture")
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    run = _cli("eval", "--runtime", "openvino", "--model", "lpmr-tiny-fmnist", cwd=tmp_path)
    assert run.returncode == 2 and "--artifact" in run.stderr


@pytest.mark.slow
def test_eval_random_architecture_with_a_hugging_face_tokenizer_runs_offline(tmp_path: Path):
    run = _cli("eval", "--model", "random:ViT-B-16-SigLIP2", "--limit", "4", "--batch-size", "4", "--json",
               "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["n"] == 4


def test_text_embeddings_are_computed_once(tiny_random, isolated_cache: Path, monkeypatch):
    runtime = TorchRuntime(tiny_random, threads=1)
    calls = []
    original = runtime.text_features
    monkeypatch.setattr(runtime, "text_features", lambda tokens: calls.append(len(tokens)) or original(tokens))
    first = class_embeddings(runtime, tiny_random.tokenize, ["a", "b"], ["x {}", "y {}"])
    second = class_embeddings(runtime, tiny_random.tokenize, ["a", "b"], ["x {}", "y {}"])
    assert calls == [4] and np.array_equal(first, second)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    class_embeddings(runtime, tiny_random.tokenize, ["a", "c"], ["x {}", "y {}"])
    assert calls == [4, 4] and len(list((isolated_cache / "text").glob("*.npy"))) == 2


def test_outputs_are_reused_on_rerun(tiny_random, tmp_path: Path, monkeypatch):
    runtime = TorchRuntime(tiny_random, threads=1)
    settings = EvalSettings(limit=64, batch_size=32)
    first = evaluate(runtime, tmp_path, settings)
    monkeypatch.setattr(runtime, "_image_features", lambda batch: (_ for _ in ()).throw(AssertionError("rerun")))
    second = evaluate(runtime, tmp_path, settings)
    assert first["metrics"] == second["metrics"]
