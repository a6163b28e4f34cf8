"""`lpmr-edge run` with its independent steps on two workers gives what the serial run gives: the same
artifacts (sha256 of every file), per-sample outputs, metrics.json (apart from when it was written), parity,
the paired comparison kept for the report and the recommendation; and each runtime there runs on the target's threads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import target_toml
from factories import small_suite_toml

from lpmr_edge.compare import COMPARISON_FILE
from lpmr_edge.pick import Constraints
from lpmr_edge.pipeline import RunPlan, run

SUITE = small_suite_toml(limit=200, corrupted_images=50)
TIMING_FIELDS = ("created",)


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, jobs: int) -> tuple[Path, list, list[str]]:
    # an aarch64 target: its artifacts run here all the same, and its bench step is a quick "skipped" (timings
    # are not compared; the scheduler's test checks that benches run alone)
    (tmp_path / "tiny.toml").write_text(target_toml(
        "tiny-arm", "test target: OpenVINO fp32/int8 and ExecuTorch fp32, one thread", "aarch64",
        threads=1, batch=8, precisions={"openvino": ["fp32", "int8"], "executorch": ["fp32"]}))
    (tmp_path / "small.toml").write_text(SUITE)
    monkeypatch.setenv("LPMR_EDGE_CACHE", str(tmp_path / f"cache-{name}"))  # nothing computed by one run is reused
    lines: list[str] = []
    plan = RunPlan(model="lpmr-tiny-fmnist", targets=(str(tmp_path / "tiny.toml"),), out=tmp_path / name,
                   suite=str(tmp_path / "small.toml"), parity_images=64,
                   constraints=Constraints(max_accuracy_drop=5.0), jobs=jobs)
    outcome = run(plan, log=lines.append)
    return tmp_path / name, outcome.choices, lines


def _results(out: Path) -> dict[str, dict]:
    found = {}
    for metrics in sorted((out / "results").rglob("metrics.json")):
        content = json.loads(metrics.read_text())
        outputs = {path.name: dict(np.load(path)) for path in sorted((metrics.parent / "outputs").glob("*.npz"))}
        manifest = json.loads((metrics.parent / "manifest.json").read_text())
        found[str(metrics.parent.relative_to(out))] = {
            "metrics": {key: value for key, value in content.items() if key not in TIMING_FIELDS},
            "outputs": outputs, "threads": manifest["runtime"]["threads"]}
    return found


def _files(out: Path) -> dict[str, dict[str, str]]:
    return {path.parent.name: json.loads(path.read_text())["files"]
            for path in sorted((out / "artifacts").glob("*/*/manifest.json"))}


@pytest.mark.slow
def test_a_concurrent_run_gives_the_serial_runs_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    serial, serial_choices, serial_lines = _run(tmp_path, monkeypatch, "serial", jobs=1)
    concurrent, choices, lines = _run(tmp_path, monkeypatch, "concurrent", jobs=2)
    assert "13 steps, up to 1 at once within" in "\n".join(serial_lines)
    assert "13 steps, up to 2 at once within" in "\n".join(lines)

    assert _files(concurrent) == _files(serial) and len(_files(serial)) == 3
    expected, got = _results(serial), _results(concurrent)
    assert sorted(got) == sorted(expected) and len(expected) == 4  # the host reference and three artifacts
    for name, result in expected.items():
        assert got[name]["metrics"] == result["metrics"], name
        assert got[name]["threads"] == result["threads"] == 1, name
        assert got[name]["outputs"].keys() == result["outputs"].keys()
        for file, arrays in result["outputs"].items():
            for key, array in arrays.items():
                np.testing.assert_array_equal(got[name]["outputs"][file][key], array, err_msg=f"{name} {file} {key}")
    parity = [[{key: value for key, value in check.items() if key != "artifact"}  # a path below each run
               for check in json.loads((out / "results" / "tiny-arm" / "parity.json").read_text())["checks"]]
              for out in (serial, concurrent)]
    assert parity[0] == parity[1] and len(parity[0]) == 3
    kept = [json.loads((out / "results" / "tiny-arm" / "openvino-int8" / COMPARISON_FILE).read_text())  # for the report
            ["comparison"]["deltas"] for out in (serial, concurrent)]
    assert kept[0] == kept[1] and "id.top1" in kept[0]

    assert len(choices) == len(serial_choices) == 1
    assert choices[0].recommended is not None
    assert choices[0].recommended.variant == serial_choices[0].recommended.variant
    assert json.dumps(choices[0].to_json()["decisions"], sort_keys=True) == \
        json.dumps(serial_choices[0].to_json()["decisions"], sort_keys=True)
