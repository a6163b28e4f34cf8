"""Time inside the runtime's calls vs the evaluation's wall time (the harness overhead), and preprocessing on
one torch thread. Behaviour only: no figure here depends on how fast the machine is."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lpmr_edge.data import load_dataset, preprocess_batches
from lpmr_edge.models import build_preprocess
from lpmr_edge.runtimes import base
from lpmr_edge.runtimes.base import CallTimer, Runtime
from lpmr_edge.runtimes.torch_runtime import TorchRuntime
from lpmr_edge.suite import EvalSettings, evaluate


class FakeClock:
    """``time.perf_counter`` replaced by a clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class SteppingRuntime(Runtime):
    """Each static batch of 2 takes 3 clock seconds inside the backend."""

    name = "stepping"

    identity = "stepping"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    @property
    def model_info(self) -> dict[str, Any]:
        return {}

    @property
    def static_batch(self) -> dict[str, int | None]:
        return {"image": 2, "text": None}

    def _image_features(self, images: np.ndarray) -> np.ndarray:
        self.clock.now += 3.0
        return np.zeros((len(images), 4), dtype=np.float32)

    def _text_features(self, tokens: np.ndarray) -> np.ndarray:
        self.clock.now += 1.0
        return np.zeros((len(tokens), 4), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {}


def test_call_seconds_add_up_the_backend_calls_only(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(base, "time", clock)
    runtime = SteppingRuntime(clock)
    runtime.image_features(np.zeros((3, 1), dtype=np.float32))  # two static batches: 6 s
    timer = CallTimer(runtime)
    clock.now += 10.0  # harness work
    runtime.image_features(np.zeros((4, 1), dtype=np.float32))  # 6 s
    runtime.text_features(np.zeros((5, 2), dtype=np.int64))  # one dynamic call: 1 s
    assert runtime.call_seconds == 13.0
    assert timer.timing() == {"runtime_s": 7.0, "wall_s": 17.0, "overhead": pytest.approx(1 - 7 / 17)}
    assert CallTimer(runtime).timing() == {"runtime_s": 0.0, "wall_s": 0.0, "overhead": 0.0}


def test_evaluate_records_its_timing_in_the_manifest_only(tiny_random, tmp_path: Path):
    runtime = TorchRuntime(tiny_random, threads=1)
    evaluate(runtime, tmp_path, EvalSettings(limit=64, batch_size=32))
    timing = json.loads((tmp_path / "manifest.json").read_text())["timing"]
    assert set(timing) == {"runtime_s", "wall_s", "overhead"}
    assert 0 < timing["runtime_s"] <= timing["wall_s"] and 0 <= timing["overhead"] <= 1
    assert timing["overhead"] == pytest.approx(1 - timing["runtime_s"] / timing["wall_s"])
    assert "timing" not in json.dumps(json.loads((tmp_path / "metrics.json").read_text()))
    assert runtime.call_seconds >= timing["runtime_s"]


def test_preprocessing_runs_on_one_torch_thread_and_restores_the_count(tiny_random):
    dataset = load_dataset("fmnist-test").head(5)
    preprocess = build_preprocess(tiny_random.describe())
    seen = []

    def spying(image: Any) -> Any:
        seen.append(torch.get_num_threads())
        return preprocess(image)

    before = torch.get_num_threads()
    batches = list(preprocess_batches(dataset, spying, 2))
    assert seen == [1] * 5 and torch.get_num_threads() == before
    expected = np.stack([np.asarray(preprocess(dataset.images.load(i))) for i in range(5)])
    assert np.array_equal(np.concatenate(batches), expected) and [len(b) for b in batches] == [2, 2, 1]
